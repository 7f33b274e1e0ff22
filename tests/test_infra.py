"""Offline checks of infra/: every deployment file parses, agrees with the others, with the
project and with the capacity test, passes Ray's own validation where Ray has one, and holds no
credentials. No Docker, Kubernetes or AWS is needed (nor used): see infra/README.md for what
only a real cluster can show."""
from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import shlex
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.kuberay.utils import parse_quantity
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.layout import validate_run_id
from cluster.sizing import GIB, OBJECT_STORE_BYTES, Throughput, head_pod_memory, worker_pod_memory
from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
SERVICE_ACCOUNT = INFRA / "kuberay" / "serviceaccount.yaml"
CLUSTER = INFRA / "aws" / "cluster.yaml"
S3_POLICY = INFRA / "aws" / "iam-policy.json"
IRSA_TRUST = INFRA / "aws" / "irsa-trust-policy.json"
AUTOSCALER_POLICY = INFRA / "aws" / "iam-autoscaler-policy.json"
CAPACITY = ROOT / "docs" / "capacity" / "capacity-10000.json"

RAY_VERSION = importlib.metadata.version("ray")  # the Ray the project is tested with


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _json(path: Path):
    return json.loads(path.read_text())


def _dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in path.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        instr, _, args = cur.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        cur = ""
    return out


def _cluster_spec() -> dict:
    return _yaml(RAYJOB)["spec"]["rayClusterSpec"]


def _worker_group() -> dict:
    groups = _cluster_spec()["workerGroupSpecs"]
    assert len(groups) == 1, "one CPU worker group"
    return groups[0]


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container is the first


def _entrypoint_args():
    words = shlex.split(_yaml(RAYJOB)["spec"]["entrypoint"])
    if words[:2] == ["rebalance", "run"]:
        argv = words[1:]
    elif words[:2] == ["python", "jobs/rebalance_book.py"]:
        argv = ["run", *words[2:]]
    else:
        raise AssertionError(f"entrypoint must be `rebalance run ...` or `python jobs/rebalance_book.py ...`: {words[:2]}")
    return build_parser().parse_args(argv)


def _s3(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    assert u.scheme == "s3" and u.netloc, f"{uri!r} is not an s3:// URI"
    return u.netloc, u.path.strip("/")


# ---------------------------------------------------------------------------------------------
# every file


def test_every_infra_file_parses():
    expected = {"README.md", "docker/Dockerfile", "kuberay/rayjob.yaml", "kuberay/serviceaccount.yaml",
                "aws/cluster.yaml", "aws/iam-policy.json", "aws/irsa-trust-policy.json",
                "aws/iam-autoscaler-policy.json", "aws/ec2-trust-policy.json"}
    present = {str(p.relative_to(INFRA)) for p in INFRA.rglob("*") if p.is_file()}
    assert expected <= present, f"missing: {sorted(expected - present)}"
    for p in INFRA.rglob("*"):
        if p.suffix in (".yaml", ".yml"):
            docs = list(yaml.safe_load_all(p.read_text()))
            assert docs and all(isinstance(d, dict) for d in docs), p
        elif p.suffix == ".json":
            policy = _json(p)
            assert policy["Version"] == "2012-10-17" and policy["Statement"], p
    instructions = [i for i, _ in _dockerfile()]
    assert instructions[0] == "FROM" and "USER" in instructions
    assert (ROOT / ".dockerignore").is_file()


# ---------------------------------------------------------------------------------------------
# the image


def test_dockerfile_base_is_rays_official_python311_image_at_the_tested_ray_version():
    base = [a for i, a in _dockerfile() if i == "FROM"]
    assert len(base) == 1, "one stage"
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311(?:-cpu)?", base[0])
    assert m, f"base image {base[0]!r}: expected rayproject/ray:<version>-py311[-cpu]"
    assert m.group(1) == RAY_VERSION, f"image Ray {m.group(1)} but the project is tested with {RAY_VERSION}"
    (ray_req,) = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if Requirement(r).name == "ray"]
    assert Version(m.group(1)) in ray_req.specifier, f"{m.group(1)} does not satisfy pyproject's {ray_req}"


def test_dockerfile_installs_the_project_without_test_extras_and_runs_as_non_root():
    steps = _dockerfile()
    installs = [a for i, a in steps if i == "RUN" and "pip install" in a]
    assert len(installs) == 1
    words = shlex.split(installs[0].split("&&")[0])
    assert "." in words, "installs this project"
    assert not any(w.startswith(".[") for w in words), "no extras (the test extras stay out of the image)"
    assert f"ray[default]=={RAY_VERSION}" in words, "Ray pinned in the same install, so it cannot move"
    users = [a for i, a in steps if i == "USER"]
    assert users and steps[-1][0] == "USER", "ends as a user of its own"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]!r}: numeric and non-root (runAsNonRoot needs a number)"
    assert not any(i in ("ARG", "ENV") and re.search(r"AWS_|SECRET|TOKEN|PASSWORD", a, re.I) for i, a in steps)


def test_dockerfile_copies_what_pip_install_needs_and_dockerignore_lets_only_that_in():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {pkg.split(".")[0] for pkg in pyproject["tool"]["setuptools"]["packages"]}
    copied = set()
    for instr, args in _dockerfile():
        if instr == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            copied |= {w.rstrip("/") for w in words[:-1]}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    assert patterns[0] == "*", ".dockerignore is an allow-list"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert copied <= allowed, f"copied but ignored: {sorted(copied - allowed)}"
    assert not allowed & {".venv", "data", ".git", "tests", ".aws", "docs"}


def _images() -> dict[str, str]:
    spec = _cluster_spec()
    images = {"rayjob head": _container(spec["headGroupSpec"])["image"]}
    for g in spec["workerGroupSpecs"]:
        images[f"rayjob worker {g['groupName']}"] = _container(g)["image"]
    sub = _yaml(RAYJOB)["spec"].get("submitterPodTemplate")
    if sub:
        images["rayjob submitter"] = sub["spec"]["containers"][0]["image"]
    docker = _yaml(CLUSTER)["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            images[f"cluster.yaml {key}"] = docker[key]
    return images


def test_image_tag_is_the_same_everywhere_and_names_the_project_and_ray_versions():
    images = _images()
    assert len(set(images.values())) == 1, f"different images: {images}"
    image = next(iter(images.values()))
    repo, _, tag = image.rpartition(":")
    assert repo.endswith("/rebalancer") and "latest" not in tag
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tag == f"{version}-ray{RAY_VERSION}-py311", f"tag {tag!r}: expected <project version>-ray<Ray version>-py311"
    assert _cluster_spec()["rayVersion"] == RAY_VERSION
    assert image in (INFRA / "README.md").read_text(), "the README builds and pushes this tag"
    assert image in DOCKERFILE.read_text(), "the Dockerfile's build comment names this tag"


# ---------------------------------------------------------------------------------------------
# the RayJob

# Fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1): a misspelt field would be
# dropped by the API server without a word.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                   "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions", "managedBy"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
                      "idleTimeoutSeconds", "upscalingMode", "version"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
                "scaleStrategy", "idleTimeoutSeconds", "suspend", "resources", "labels"}


def test_rayjob_fields_exist_and_the_cluster_autoscales_from_zero():
    job = _yaml(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    for have, known, where in ((spec, RAYJOB_SPEC, "spec"), (cluster, RAYCLUSTER_SPEC, "rayClusterSpec"),
                               (cluster["autoscalerOptions"], AUTOSCALER_OPTIONS, "autoscalerOptions"),
                               (cluster["headGroupSpec"], HEAD_GROUP, "headGroupSpec"),
                               (_worker_group(), WORKER_GROUP, "workerGroupSpecs[0]")):
        assert set(have) <= known, f"unknown {where} fields: {sorted(set(have) - known)}"
    assert cluster["enableInTreeAutoscaling"] is True
    opts = cluster["autoscalerOptions"]
    assert opts["idleTimeoutSeconds"] > 0 and opts.get("upscalingMode", "Default") in ("Default", "Aggressive", "Conservative")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "the head runs only the driver"
    w = _worker_group()
    assert (w["replicas"], w["minReplicas"]) == (0, 0) and w["maxReplicas"] >= 1, "workers start at 0"
    for group in (cluster["headGroupSpec"], w):
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams values are strings"
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert not spec.get("entrypointNumCpus"), "the head has no CPUs to reserve for the driver"
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode")


def test_rayjob_entrypoint_is_a_valid_run_with_s3_uris_and_a_fixed_run_id():
    args = _entrypoint_args()
    assert args.func.__name__ == "cmd_run"
    _s3(args.book), _s3(args.out)
    assert args.run_id is not None, "a fixed run id: a retry or re-apply resumes the same run"
    validate_run_id(args.run_id)
    assert args.date is not None and args.date.isoformat() in args.run_id, "the run id names the trade date"
    job = _yaml(RAYJOB)
    assert job["metadata"]["labels"]["rebalancer/run-id"] == args.run_id
    assert args.date.isoformat() in job["metadata"]["name"]
    assert args.address is None and args.num_cpus is None, "the driver joins the cluster through RAY_ADDRESS"
    assert args.s3_endpoint_url is None, "real S3: no endpoint override"
    w = _worker_group()
    assert args.max_in_flight == 2 * w["maxReplicas"] * int(w["rayStartParams"]["num-cpus"]), \
        "--max-in-flight queues the whole cluster's demand at once (2 x maxReplicas x num-cpus)"
    assert args.solver == "fast"


def test_kuberay_autoscaler_reads_the_cluster_spec_as_intended():
    """Ray's own translation of a RayCluster into an autoscaling config (what the autoscaler
    sidecar runs on), validated against Ray's schema by the same call."""
    job = _yaml(RAYJOB)
    cr = {"metadata": {"name": job["metadata"]["name"], "namespace": job["metadata"]["namespace"]},
          "spec": job["spec"]["rayClusterSpec"]}
    config = _derive_autoscaling_config_from_ray_cr(copy.deepcopy(cr))
    validate_config(config)
    w = _worker_group()
    head, worker = config["available_node_types"]["headgroup"], config["available_node_types"][w["groupName"]]
    assert head["resources"]["CPU"] == 0 and head["max_workers"] == 0
    assert (worker["min_workers"], worker["max_workers"]) == (0, w["maxReplicas"])
    assert worker["resources"]["CPU"] == int(w["rayStartParams"]["num-cpus"])
    assert worker["resources"]["memory"] == int(parse_quantity(_container(w)["resources"]["limits"]["memory"]))
    assert config["max_workers"] == w["maxReplicas"]
    assert config["idle_timeout_minutes"] == pytest.approx(
        job["spec"]["rayClusterSpec"]["autoscalerOptions"]["idleTimeoutSeconds"] / 60)
    assert config["upscaling_speed"] >= 1000, "no rate limit on upscaling"


def test_pod_resources_follow_the_capacity_test():
    tp = Throughput.load(str(CAPACITY))
    w = _worker_group()
    cpus = int(w["rayStartParams"]["num-cpus"])
    res = _container(w)["resources"]
    assert parse_quantity(res["limits"]["cpu"]) == cpus, "limit = Ray's CPUs: one task process per CPU"
    assert parse_quantity(res["requests"]["cpu"]) <= cpus
    assert res["requests"]["memory"] == res["limits"]["memory"], "memory request = limit"
    need = worker_pod_memory(tp, cpus).required_bytes
    have = parse_quantity(res["limits"]["memory"])
    assert need <= have <= need + 2 * GIB, f"worker memory {res['limits']['memory']} vs {need / GIB:.2f} GiB derived"
    head = _container(_cluster_spec()["headGroupSpec"])["resources"]
    assert parse_quantity(head["limits"]["memory"]) >= head_pod_memory(tp).required_bytes
    assert head["requests"]["memory"] == head["limits"]["memory"]
    for group in (_cluster_spec()["headGroupSpec"], w):
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store == OBJECT_STORE_BYTES, "the object store the memory derivation counts"
        shm = [v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm"][0]["emptyDir"]
        assert shm["medium"] == "Memory" and parse_quantity(shm["sizeLimit"]) >= store
    node = _yaml(CLUSTER)["available_node_types"]
    workers = [t for name, t in node.items() if name != _yaml(CLUSTER)["head_node_type"]]
    assert [t["resources"]["CPU"] for t in workers] == [cpus], "cluster launcher workers: the same size"
    assert any(f"--object-store-memory={OBJECT_STORE_BYTES}" in c for c in _yaml(CLUSTER)["worker_start_ray_commands"])


# ---------------------------------------------------------------------------------------------
# the cluster launcher


def _prepared() -> dict:
    return prepare_config(copy.deepcopy(_yaml(CLUSTER)))


def test_cluster_launcher_config_passes_rays_validation():
    config = _prepared()
    validate_config(config)
    raw = _yaml(CLUSTER)
    assert raw["provider"]["type"] == "aws" and "aws_credentials" not in raw["provider"]
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["max_workers"] == 0
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert len(workers) == 1
    (wt,) = workers.values()
    assert wt["min_workers"] == 0 and wt["max_workers"] == config["max_workers"] == _worker_group()["maxReplicas"]
    assert config["idle_timeout_minutes"] > 0
    for t in config["available_node_types"].values():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
        assert t["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required"
    assert not (config["setup_commands"] or config["head_setup_commands"] or config["worker_setup_commands"]), \
        "the image carries everything; nothing is installed on the nodes"


def test_rays_schema_validation_rejects_a_broken_launcher_config():
    broken = _prepared()
    broken["available_node_types"]["ray.worker.cpu16"]["min_worker"] = 0  # misspelt
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    broken = _prepared()
    broken["max_workers"] = 0
    broken["available_node_types"]["ray.worker.cpu16"]["min_workers"] = 1  # more than max_workers
    with pytest.raises(ValueError):
        validate_config(broken)


# ---------------------------------------------------------------------------------------------
# IAM


def _statements(path: Path) -> list[dict]:
    return _json(path)["Statement"]


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def _allows(path: Path, action: str, resource: str, context: dict | None = None) -> bool:
    """Whether the policy allows ``action`` on ``resource`` in the request ``context`` (condition
    keys such as ``s3:prefix``): its Allow statements with their StringLike / StringEquals
    conditions (a key missing from the context fails), and any Deny."""
    context = context or {}

    def matches(st):
        if not any(fnmatchcase(action, a) for a in _as_list(st["Action"])):
            return False
        if not any(fnmatchcase(resource, r) for r in _as_list(st["Resource"])):
            return False
        for op, conds in st.get("Condition", {}).items():
            for key, values in conds.items():
                if key not in context or op not in ("StringLike", "StringEquals"):
                    return False
                test = fnmatchcase if op == "StringLike" else str.__eq__
                if not any(test(context[key], v) for v in _as_list(values)):
                    return False
        return True
    sts = _statements(path)
    if any(st["Effect"] == "Deny" and matches(st) for st in sts):
        return False
    return any(st["Effect"] == "Allow" and matches(st) for st in sts)


def test_s3_policy_reads_the_book_writes_the_run_and_nothing_else():
    args = _entrypoint_args()
    bucket, book = _s3(args.book)
    out_bucket, out = _s3(args.out)
    assert bucket == out_bucket
    run = f"{out}/{args.run_id}"
    obj = f"arn:aws:s3:::{bucket}/"
    assert _allows(S3_POLICY, "s3:GetObject", obj + f"{book}/book.json")
    assert _allows(S3_POLICY, "s3:GetObject", obj + f"{book}/lots/bucket=3/part-0.parquet")
    assert not _allows(S3_POLICY, "s3:PutObject", obj + f"{book}/book.json"), "the book is read-only"
    assert not _allows(S3_POLICY, "s3:DeleteObject", obj + f"{book}/book.json")
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert _allows(S3_POLICY, action, obj + f"{run}/trades/shard-00003.parquet"), action
    assert _allows(S3_POLICY, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": f"{run}/_shards/"})
    assert _allows(S3_POLICY, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": f"{book}/"})
    assert not _allows(S3_POLICY, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": ""}), "no listing of the bucket"
    assert not _allows(S3_POLICY, "s3:ListBucket", f"arn:aws:s3:::{bucket}")
    assert not _allows(S3_POLICY, "s3:GetObject", obj + "other/secret.csv")
    assert not _allows(S3_POLICY, "s3:PutObject", f"arn:aws:s3:::another-bucket/{run}/x")
    assert not _allows(S3_POLICY, "s3:DeleteBucket", f"arn:aws:s3:::{bucket}")
    for st in _statements(S3_POLICY):
        assert all(a != "*" and not a.endswith(":*") for a in _as_list(st["Action"])), st
        assert all(r != "*" for r in _as_list(st["Resource"])), st


def test_irsa_binds_the_pods_service_account_to_the_role():
    sa = _yaml(SERVICE_ACCOUNT)
    assert sa["kind"] == "ServiceAccount"
    role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    m = re.fullmatch(r"arn:aws:iam::(\d{12}):role/[\w+=,.@-]+", role)
    assert m, role
    job = _yaml(RAYJOB)
    assert sa["metadata"]["namespace"] == job["metadata"]["namespace"]
    spec = job["spec"]["rayClusterSpec"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        assert group["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
        assert group["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    (st,) = _statements(IRSA_TRUST)
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    provider = st["Principal"]["Federated"]
    assert provider.startswith(f"arn:aws:iam::{m.group(1)}:oidc-provider/")
    issuer = provider.split("oidc-provider/", 1)[1]
    cond = st["Condition"]["StringEquals"]
    assert cond[f"{issuer}:sub"] == f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}"
    assert cond[f"{issuer}:aud"] == "sts.amazonaws.com"


def test_cluster_launcher_nodes_use_instance_profiles_the_head_may_pass():
    config = _yaml(CLUSTER)
    head_type = config["head_node_type"]
    profiles = {n: t["node_config"]["IamInstanceProfile"]["Arn"] for n, t in config["available_node_types"].items()}
    (worker_profile,) = [a for n, a in profiles.items() if n != head_type]
    account, name = re.fullmatch(r"arn:aws:iam::(\d{12}):instance-profile/([\w+=,.@-]+)", worker_profile).groups()
    to_ec2 = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert _allows(AUTOSCALER_POLICY, "iam:PassRole", f"arn:aws:iam::{account}:role/{name}", to_ec2)
    assert not _allows(AUTOSCALER_POLICY, "iam:PassRole", f"arn:aws:iam::{account}:role/admin", to_ec2)
    assert not _allows(AUTOSCALER_POLICY, "iam:PassRole", f"arn:aws:iam::{account}:role/{name}",
                       {"iam:PassedToService": "lambda.amazonaws.com"})
    mine = {"ec2:ResourceTag/ray-cluster-name": config["cluster_name"]}
    instance = f"arn:aws:ec2:us-east-1:{account}:instance/i-0123456789abcdef0"
    assert _allows(AUTOSCALER_POLICY, "ec2:TerminateInstances", instance, mine)
    assert not _allows(AUTOSCALER_POLICY, "ec2:TerminateInstances", instance,
                       {"ec2:ResourceTag/ray-cluster-name": "someone-else"})
    assert _allows(AUTOSCALER_POLICY, "ec2:RunInstances", "*")
    for st in _statements(AUTOSCALER_POLICY):
        assert all(a != "*" and not a.endswith(":*") for a in _as_list(st["Action"])), st


# ---------------------------------------------------------------------------------------------
# no credentials

_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
_SETTING = re.compile(r"aws_secret_access_key|aws_access_key_id|aws_session_token|aws_credentials", re.I)
# 40 characters of base64 with upper, lower and digits: the shape of a secret access key.
_SECRET_VALUE = re.compile(r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*\d)"
                           r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_SECRET_ENV = re.compile(r"^AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN|SECURITY_TOKEN)$")


def _text_findings(text: str, config: bool) -> list[str]:
    """Credential-shaped text; configuration files also may not name the key settings at all
    (prose, like the README, may)."""
    pats = [_KEY_ID, _PRIVATE_KEY] + ([_SETTING, _SECRET_VALUE] if config else [])
    return [f"{p.pattern[:30]}...: {m.group(0)[:12]}..." for p in pats for m in p.finditer(text)]


def _structure_findings(obj, where: str = "") -> list[str]:
    """Secret AWS variables in container env, secrets pulled in with envFrom, AWS variables in a
    Ray runtime_env (a RayJob's runtimeEnvYAML or a runtime_env mapping)."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{where}.{k}"
            if k == "env" and isinstance(v, list):
                found += [f"{here}: {e.get('name')}" for e in v
                          if isinstance(e, dict) and _SECRET_ENV.match(str(e.get("name", "")))]
            if k == "envFrom" and isinstance(v, list):
                found += [f"{here}: secretRef" for e in v if isinstance(e, dict) and "secretRef" in e]
            if k in ("runtimeEnvYAML", "runtime_env", "runtime_env_json"):
                renv = yaml.safe_load(v) if isinstance(v, str) else v
                env_vars = (renv or {}).get("env_vars", {}) if isinstance(renv, dict) else {}
                found += [f"{here}: env_vars {name}" for name in env_vars if str(name).startswith("AWS_")]
            found += _structure_findings(v, here)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _structure_findings(v, f"{where}[{i}]")
    return found


def _infra_files() -> list[Path]:
    return [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]


def test_no_credentials_anywhere_in_infra():
    findings = []
    for p in _infra_files():
        text = p.read_text()
        findings += [f"{p.relative_to(ROOT)}: {f}" for f in _text_findings(text, config=p.suffix != ".md")]
        if p.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                findings += [f"{p.relative_to(ROOT)}: {f}" for f in _structure_findings(doc)]
        elif p.suffix == ".json":
            findings += [f"{p.relative_to(ROOT)}: {f}" for f in _structure_findings(json.loads(text))]
    assert not findings, findings


def test_the_credential_checks_catch_planted_secrets():
    """The checks above can fail: each planted secret is found."""
    job = _yaml(RAYJOB)
    job["spec"]["runtimeEnvYAML"] = "env_vars:\n  AWS_SECRET_ACCESS_KEY: x\n"
    _container(job["spec"]["rayClusterSpec"]["headGroupSpec"]).setdefault("env", []).append(
        {"name": "AWS_SESSION_TOKEN", "value": "x"})
    _container(job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]).setdefault("envFrom", []).append(
        {"secretRef": {"name": "aws"}})
    found = _structure_findings(job)
    assert len(found) == 3, found
    planted = ("provider:\n  aws_credentials:\n    aws_access_key_id: AKIAIOSFODNN7EXAMPLE\n"
               "    secret: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    found = _text_findings(planted, config=True)
    assert any("AKIA" in f for f in found) and any("wJalrXUtnFEM" in f for f in found)
    assert any("aws_credenti" in f for f in found) and any("aws_access_k" in f for f in found)
    assert _text_findings(planted, config=False), "key ids are caught in prose too"
    assert not _text_findings((INFRA / "kuberay" / "rayjob.yaml").read_text(), config=True)

