"""cluster/: every Ray cluster launcher YAML passes Ray's own preparation + schema validation (what
``ray up`` runs before touching a cloud), KubeRay manifests have the CRD structure we rely on, nothing
binds the dashboard / job server to a public address, and no file carries a secret."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
FAKE = CLUSTER / "fake_autoscaling.yaml"  # Ray's fake multi-node provider: a one-machine rehearsal
LAUNCHER = sorted(p for p in CLUSTER.glob("*.yaml") if p != FAKE)
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
ALL_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file()) + sorted((REPO / "jobs").glob("runtime_env*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_files_present():
    assert {p.name for p in LAUNCHER} == {"aws.yaml", "gcp.yaml"}
    assert FAKE.exists()


def test_fake_cluster_mirrors_aws_node_types():
    """cluster/fake_autoscaling.yaml passes Ray's schema, uses the fake provider, and has aws.yaml's worker
    types (same names, same GPU counts, all from zero) under a CPU head, with a short idle timeout.
    (Ray's prepare_config cannot be used: the wheel lacks the fake provider's defaults file, so the file
    spells out every field itself; the autoscaler's monitor validates it with validate_config.)"""
    from ray.autoscaler._private.util import validate_config

    fake = yaml.safe_load(FAKE.read_text())
    validate_config(fake)
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    assert fake["provider"]["type"] == "fake_multinode"
    types = fake["available_node_types"]
    assert fake["head_node_type"] == "ray.head.default"  # the name the fake provider gives its head
    assert types["ray.head.default"]["resources"].get("GPU", 0) == 0
    workers = {k: v for k, v in types.items() if k != fake["head_node_type"]}
    aws_workers = {k: v for k, v in aws["available_node_types"].items() if k != aws["head_node_type"]}
    assert set(workers) == set(aws_workers)
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
        assert t["resources"].get("GPU", 0) == aws_workers[name]["resources"].get("GPU", 0), name
    assert 0 < fake["idle_timeout_minutes"] <= 1
    assert {p.name for p in KUBERAY} >= {"raycluster.yaml", "rayjob.yaml"}


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_config_validates_with_ray(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    validate_config(prepare_config(raw))  # defaults merged, docker checked, schema (ray-schema.json)


def test_launcher_validation_rejects_a_bad_field():
    """The validation above is real: a misspelled field or a bad type fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    raw["available_node_types"]["gpu_1x"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))
    raw = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())
    raw["idle_timeout_minutes"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_node_types(path):
    from ray.autoscaler._private.util import prepare_config

    cfg = prepare_config(yaml.safe_load(path.read_text()))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    assert all(v["min_workers"] == 0 for v in workers.values()), "every worker type autoscales from zero"
    gpus = sorted(v["resources"]["GPU"] for v in gpu.values())
    assert gpus[0] == 1 and gpus[-1] == 8, f"need 1-GPU (annotate) and 8-GPU (align) types, got {gpus}"
    one = [v for v in gpu.values() if v["resources"]["GPU"] == 1][0]
    assert one["max_workers"] >= 8, "annotate scales out over many small GPU nodes"
    assert cfg["idle_timeout_minutes"] > 0
    assert sum(v["max_workers"] for v in workers.values()) <= cfg["max_workers"]
    # the project is installed on every node (docker image and/or setup commands)
    assert any("pip install" in c and "[gpu" in c for c in cfg["setup_commands"])
    assert cfg["docker"]["image"].startswith("rayproject/ray:2.60.0")


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_binds_dashboard_to_loopback(path):
    """After Ray fills in its defaults (which use --dashboard-host=0.0.0.0), our start commands win."""
    from ray.autoscaler._private.util import prepare_config

    cfg = prepare_config(yaml.safe_load(path.read_text()))
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in yaml.safe_dump(cfg)


def _pod_specs(cluster_spec: dict) -> list[tuple[str, dict]]:
    out = [("head", cluster_spec["headGroupSpec"]["template"]["spec"])]
    out += [(g["groupName"], g["template"]["spec"]) for g in cluster_spec["workerGroupSpecs"]]
    return out


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    assert "dashboard-host" not in head["rayStartParams"] or head["rayStartParams"]["dashboard-host"] != "0.0.0.0"
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res["limits"], "CPU head"
    gpus = {}
    for g in spec["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(g)
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1 and g.get("replicas", 0) == 0
        c = g["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"] == c["resources"]["requests"]
        gpus[g["groupName"]] = int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert sorted(set(gpus.values())) == [0, 1, 8], gpus
    for name, pod in _pod_specs(spec):
        for c in pod["containers"]:
            assert c["image"] and c["name"] and c["resources"]["limits"]["cpu"], name


def test_kuberay_raycluster():
    (doc,) = _docs(CLUSTER / "kuberay" / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _check_ray_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_the_pipeline():
    from cwpo_ray.config import build_config
    from cwpo_ray.pipeline import PipelineConfig

    docs = {d["kind"]: d for d in _docs(CLUSTER / "kuberay" / "rayjob.yaml")}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python ") and "-m cwpo_ray pipeline --config /etc/cwpo/pipeline.yaml" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec["runtimeEnvYAML"])
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    # the config the entrypoint reads is a valid PipelineConfig, mounted into the head pod (the driver's)
    cm = docs["ConfigMap"]
    build_config(PipelineConfig, yaml.safe_load(cm["data"]["pipeline.yaml"]))
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in head["volumes"])
    assert any(m["mountPath"] == "/etc/cwpo" for m in head["containers"][0]["volumeMounts"])
    # every pod sees the same run directory
    for name, pod in _pod_specs(spec["rayClusterSpec"]):
        assert any(m["mountPath"] == "/mnt/cwpo" for m in pod["containers"][0]["volumeMounts"]), name


def test_kuberay_no_public_services():
    for path in KUBERAY:
        for d in _docs(path):
            assert d["kind"] not in ("Ingress", "Route"), path.name
            if d["kind"] == "Service":
                assert d["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
            assert "LoadBalancer" not in yaml.safe_dump(d) and "NodePort" not in yaml.safe_dump(d), path.name


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                         # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),                   # Hugging Face token
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),            # GitHub token
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),                # Google API key
    re.compile(r"(?i)\b(aws_secret_access_key|secret_key|password|api_key|auth_token|HF_TOKEN)\b\s*[:=]\s*\S+"),
]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_secrets(path):
    text = path.read_text()
    for pat in SECRET_PATTERNS:
        assert not pat.search(text), f"{path.name}: looks like a secret ({pat.pattern})"
    for d in (_docs(path) if path.suffix == ".yaml" else []):
        assert d.get("kind") != "Secret", path.name
        # launcher: no private key files; KubeRay: no env values that look like credentials
        assert "ssh_private_key" not in d.get("auth", {}), path.name


def test_secret_scan_catches_a_planted_key():
    planted = "env:\n  - {name: HF_TOKEN, value: hf_" + "a" * 34 + "}\n"
    assert any(p.search(planted) for p in SECRET_PATTERNS)
