"""FineTuneJob -> PyTorchJob/ConfigMap/RBAC, checked against the Kubeflow and core schemas."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune import render
from kubetune.api.validation import load_job_file, parse_job

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Kubeflow Training Operator v1.9 PyTorchJob CRD, vendored so the tests need nothing outside the repo.
KUBEFLOW_CRD = ROOT / "tests" / "fixtures" / "kubeflow.org_pytorchjobs.yaml"
SETTINGS = render.RenderSettings(trainer_image="registry.example/kubetune/trainer:1.2.3")


@pytest.fixture(scope="module")
def pytorchjob_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(KUBEFLOW_CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def _job(**spec_patch: Any) -> Any:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["spec"] = {**doc["spec"], **spec_patch}
    return parse_job(doc)


def _by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_to_valid_objects(path: Path, pytorchjob_validator: Any) -> None:
    children = render.build_children(load_job_file(str(path)), SETTINGS)
    kinds = [o["kind"] for o in children]
    assert kinds[0] == "ConfigMap" and kinds[-1] == "PyTorchJob"
    for obj in children:
        if obj["kind"] == "PyTorchJob":
            errors = [f"{list(e.path)}: {e.message}" for e in pytorchjob_validator.iter_errors(obj)]
            assert errors == []
            # The pod template is core/v1: validate it as such.
            for replica in obj["spec"]["pytorchReplicaSpecs"].values():
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": replica["template"],
                }
                kubernetes_validate.validate(pod_template, "1.33.0", strict=True)
        else:
            kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_multi_node_job_has_master_and_workers_with_gpus_shm_and_nccl() -> None:
    job = load_job_file(str(ROOT / "examples" / "qwen2.5-7b-lora-2x8gpu.yaml"))
    ptj = render.build_pytorchjob(job, SETTINGS)
    specs = ptj["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert specs["Worker"]["replicas"] == 1
    assert ptj["spec"]["nprocPerNode"] == "8"
    pod = specs["Worker"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"
    assert container["image"] == "registry.example/kubetune/trainer:1.2.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["NCCL_IB_DISABLE"] == "0"
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["KUBETUNE_JOB_NAME"] == job.name
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert ptj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    assert ptj["spec"]["runPolicy"]["backoffLimit"] == 5
    assert ptj["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 86400
    assert container["command"] == ["python", "-m", "kubetune.trainer.launch"]
    assert "kubetune.trainer" in container["args"]
    # torchrun's default 30 s before SIGKILL would cut a preemption checkpoint short.
    assert "--shutdown-timeout=270" in container["args"]
    assert pod["terminationGracePeriodSeconds"] == 300
    # OnFailure: the only policy (with Always) whose restarts Kubeflow counts against backoffLimit.
    assert specs["Master"]["restartPolicy"] == specs["Worker"]["restartPolicy"] == "OnFailure"


def test_single_node_job_has_no_worker_section_and_cpu_job_no_gpu_toleration() -> None:
    job = _job(resources={"nodes": 1, "gpusPerNode": 0})
    ptj = render.build_pytorchjob(job, SETTINGS)
    assert list(ptj["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert ptj["spec"]["nprocPerNode"] == "1"
    pod = ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "resources" not in pod["containers"][0]


def test_credentials_only_through_secret_key_refs() -> None:
    job = _job(
        storage={
            "endpoint": "http://minio:9000",
            "credentialsSecret": {"name": "s3", "sessionTokenKey": "token"},
        }
    )
    children = render.build_children(job, SETTINGS)
    env = children[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    plain = {e["name"]: e.get("value") for e in env}
    # Only S3 is redirected: a global AWS_ENDPOINT_URL would send STS (IRSA) to MinIO too.
    assert plain["AWS_ENDPOINT_URL_S3"] == "http://minio:9000" and "AWS_ENDPOINT_URL" not in plain
    secret_vars = {e["name"]: e for e in env if e["name"].startswith("AWS_") and "valueFrom" in e}
    assert set(secret_vars) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    assert secret_vars["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "token"}
    assert all("value" not in e for e in secret_vars.values())
    config = yaml.safe_load(children[0]["data"]["config.yaml"])
    assert config["spec"]["storage"]["credentialsSecret"]["name"] == "s3"
    assert "AWS_SECRET_ACCESS_KEY" not in {e["name"] for e in env if "value" in e}


def test_configmap_holds_the_resolved_job_the_trainer_can_load_back() -> None:
    job = _job()
    cm = render.build_configmap(job)
    doc = yaml.safe_load(cm["data"]["config.yaml"])
    again = parse_job(doc)
    assert again.spec == job.spec
    # Defaults are filled in so the trainer never guesses.
    assert doc["spec"]["data"]["invalidRows"] == "fail"
    assert doc["spec"]["training"]["seed"] == 42


def test_rbac_lets_the_trainer_patch_only_its_own_status() -> None:
    job = _job()
    objs = _by_kind(render.build_children(job, SETTINGS))
    rules = objs["Role"]["rules"]
    assert all(rule["resourceNames"] == [job.name] for rule in rules)
    status_rule = next(r for r in rules if r["resources"] == ["finetunejobs/status"])
    assert status_rule["verbs"] == ["get", "patch"]
    pod = objs["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"]
    assert objs["RoleBinding"]["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]


def _status_patchers(children: list[dict[str, Any]]) -> dict[str, set[str]]:
    """ServiceAccount -> the FineTuneJobs whose status it may patch, from the rendered RBAC."""
    roles = {o["metadata"]["name"]: o for o in children if o["kind"] == "Role"}
    out: dict[str, set[str]] = {}
    for binding in (o for o in children if o["kind"] == "RoleBinding"):
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            if "finetunejobs/status" in rule["resources"] and "patch" in rule["verbs"]:
                for subject in binding["subjects"]:
                    out.setdefault(subject["name"], set()).update(rule["resourceNames"])
    return out


def test_a_shared_user_service_account_cannot_patch_another_jobs_status() -> None:
    # Two jobs run as the same user ServiceAccount (e.g. one IRSA account per team). Binding each
    # job's status Role to it let either job's pods patch the other's status.
    children: list[dict[str, Any]] = []
    pods: dict[str, str] = {}
    for name in ("job-a", "job-b"):
        job = _job(resources={"serviceAccountName": "irsa-trainer", "gpusPerNode": 0})
        job = parse_job({**job.to_manifest(), "metadata": {"name": name, "namespace": "default"}})
        objs = render.build_children(job, SETTINGS)
        children += objs
        pod = _by_kind(objs)["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        pods[name] = pod["serviceAccountName"]
        assert pods[name] == "irsa-trainer"
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["KUBETUNE_STATUS_REPORTING"] == "off"  # nothing it may patch: it does not try
        assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]
    patchers = _status_patchers(children)
    for name, account in pods.items():
        assert patchers.get(account, set()) <= {name}, f"{account} may patch {sorted(patchers[account])}"


def test_per_job_service_accounts_patch_only_their_own_job() -> None:
    children: list[dict[str, Any]] = []
    pods: dict[str, str] = {}
    for name in ("job-a", "job-b"):
        job = _job()
        job = parse_job({**job.to_manifest(), "metadata": {"name": name, "namespace": "default"}})
        objs = render.build_children(job, SETTINGS)
        children += objs
        pod = _by_kind(objs)["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        pods[name] = pod["serviceAccountName"]
    patchers = _status_patchers(children)
    assert {pods[name]: {name} for name in pods} == patchers


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards "restricted" profile (Kubernetes 1.33), as the admission plugin checks it."""
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key}")
    allowed_volumes = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {sorted(kinds - allowed_volumes)}")
    pod_sc = pod.get("securityContext") or {}
    for c in pod["containers"] + (pod.get("initContainers") or []):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation != false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{c['name']}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{c['name']}: capabilities.add {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot != true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{c['name']}: hostPort")
    return problems


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_trainer_pods_pass_pod_security_restricted(path: Path) -> None:
    job = load_job_file(str(path))
    pytorchjob = _by_kind(render.build_children(job, SETTINGS))["PyTorchJob"]
    for replica in pytorchjob["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        if job.spec.network.host_network:  # asked for by the user: "restricted" forbids it, rightly
            assert _restricted_violations(pod) == ["hostNetwork"]
        else:
            assert _restricted_violations(pod) == []


def test_restricted_check_catches_a_bare_pod() -> None:
    bare = {"containers": [{"name": "pytorch"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    assert len(_restricted_violations(bare)) == 5


def test_trainer_image_runs_as_a_numeric_non_root_user() -> None:
    # runAsNonRoot makes the kubelet refuse an image whose USER is root or a name it cannot check.
    users = [
        line.split()[1]
        for line in (ROOT / "trainer_image" / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"


def test_names_are_deterministic_and_fit_kubernetes_limits() -> None:
    long_name = "a" * 60 + "-b" * 40
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = long_name[:253]
    job = parse_job(doc)
    names = render.child_names(job)
    assert names == render.child_names(copy.deepcopy(job))
    # Kubeflow appends -worker-<index> for pods and Services (DNS-1035, 63 max).
    assert len(names.job + "-worker-1023") <= 63
    assert all(len(v) <= 63 for v in render.labels(job).values())
    other = parse_job({**doc, "metadata": {"name": "a" * 60 + "-c" * 40}})
    assert render.child_names(other).job != names.job


def test_name_starting_with_a_digit_still_gives_dns1035_service_names() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = "7b-run"
    assert render.child_names(parse_job(doc)).job[0].isalpha()


def test_suspend_priority_and_deadlines_reach_the_run_policy() -> None:
    job = _job(
        suspend=True,
        priority="high",
        runPolicy={"backoffLimit": 1, "activeDeadlineSeconds": 60},
        resources={"gpusPerNode": 0, "priorityClassName": "batch"},
    )
    ptj = render.build_pytorchjob(job, SETTINGS)
    assert ptj["spec"]["runPolicy"]["suspend"] is True
    assert ptj["spec"]["runPolicy"]["activeDeadlineSeconds"] == 60
    assert ptj["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert ptj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["priorityClassName"] == "batch"


@pytest.mark.parametrize("backend", [render.PYTORCHJOB, render.TRAINJOB])
def test_a_held_job_is_rendered_out_of_kueues_sight_until_resumed(backend: str) -> None:
    # Kueue would admit and start a queued job at once; the operator adds the label on resume.
    held = render.build_children(_job(suspend=True, queueName="team-a"), SETTINGS, backend)[-1]
    queued = render.build_children(_job(queueName="team-a"), SETTINGS, backend)[-1]
    assert "kueue.x-k8s.io/queue-name" not in held["metadata"].get("labels", {})
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_custom_tolerations_and_host_network_pass_through() -> None:
    job = _job(
        resources={"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]},
        network={"hostNetwork": True, "nccl": {"env": {"NCCL_ALGO": "Ring"}}},
    )
    pod = render.build_pytorchjob(job, SETTINGS)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"name": "NCCL_ALGO", "value": "Ring"} in pod["containers"][0]["env"]


def test_spec_image_overrides_the_operator_default() -> None:
    job = _job(image="my/trainer:dev")
    pod = render.build_pytorchjob(job, SETTINGS)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "my/trainer:dev"


def test_volumes_are_mounted_and_user_env_takes_secrets_by_reference() -> None:
    job = _job(
        volumes=[{"name": "models", "claimName": "models-pvc", "mountPath": "/models", "readOnly": True}],
        env=[
            {"name": "HF_TOKEN", "secretKeyRef": {"name": "hf", "key": "token"}},
            {"name": "WANDB_PROJECT", "value": "support"},
        ],
    )
    children = render.build_children(job, SETTINGS)
    pod = children[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models-pvc", "readOnly": True}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert env["WANDB_PROJECT"]["value"] == "support"
    assert "token" not in children[0]["data"]["config.yaml"].replace("key: token", "")


def test_cluster_problems_name_paths_no_volume_mounts() -> None:
    job = _job(
        model={"source": "/models/base"},
        datasets=[{"source": "s3://data/a.jsonl"}, {"source": "./local.jsonl"}],
        output={"uri": "/models/out"},
        volumes=[{"name": "models", "claimName": "m", "mountPath": "/models"}],
    )
    problems = render.cluster_problems(job)
    assert len(problems) == 1 and problems[0].startswith("spec.datasets[1].source: './local.jsonl' is a path")
    s3_job = _job(
        model={"source": "Qwen/Qwen2.5-0.5B"}, datasets=[{"source": "s3://data/x"}], output={"uri": "s3://out/x/"}
    )
    assert render.cluster_problems(s3_job) == []
    assert [p.split(":")[0] for p in render.cluster_problems(_job())] == [
        "spec.model.source",
        "spec.output.uri",
        "spec.datasets[0].source",
        "spec.datasets[1].source",
    ]
