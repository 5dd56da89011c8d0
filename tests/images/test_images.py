"""Smoke tests of the OCI images built by ``images/build.py``: each image's entrypoint runs
from its unpacked root filesystem in a bubblewrap sandbox shaped like the pods the operator
renders (read-only root, uid/gid 1000, emptyDirs on /tmp and $HOME).

* the operator image starts and answers ``/healthz``, then leads the dev cluster with its
  least-privilege ServiceAccount and drives a FineTuneJob to Running;
* the trainer image (when built: ``make images``) validates a job with exactly the command,
  env and mounts of the operator's validation pod.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from images import build as image_build
from kubetune.devcluster.testing import Cluster, wait_until
from kubetune_operator.render import common
from kubetune_operator.settings import OperatorSettings
from tests.images.conftest import Image

SETTINGS = OperatorSettings()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.kill()  # bwrap's pid namespace dies with it (--die-with-parent)
        proc.wait(timeout=30)


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def passwd(image: Image) -> dict[str, list[str]]:
    text = (image.rootfs / "etc" / "passwd").read_text()
    return {line.split(":")[0]: line.split(":") for line in text.splitlines() if line}


# -- what both images promise the pods ----------------------------------------------------------
def check_common(image: Image, name: str) -> None:
    """``image.report`` is what build.py recorded (the checkout may have moved on since)."""
    ctx = image_build.BuildContext(
        version=image_build.BuildContext.detect().version,
        revision=image.report["revision"],
        source_date_epoch=image.report["source_date_epoch"],
        source="",
    )
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", ctx.revision), ctx.revision
    uid, gid = image.user
    # The pods run as settings.run_as_user/group with HOME on an emptyDir (render/common.py).
    assert (uid, gid) == (SETTINGS.run_as_user, SETTINGS.run_as_group) == (1000, 1000)
    assert image.env["HOME"] == common.HOME_DIR == image.config["config"]["WorkingDir"]
    user = passwd(image)["kubetune"]
    assert user[2:4] == [str(uid), str(gid)] and user[5] == common.HOME_DIR, user
    home = image.members["." + common.HOME_DIR]
    assert (home.uid, home.gid) == (uid, gid) and home.isdir()
    # Nothing else belongs to the user: the image cannot modify itself.
    owned = [m.name for m in image.members.values() if m.uid == uid and m.name != home.name]
    assert not owned, owned[:10]
    assert not [m.name for m in image.members.values() if m.mtime > ctx.source_date_epoch]
    # OCI labels from the checkout (SOURCE_DATE_EPOCH = commit time).
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == ctx.version
    assert labels["org.opencontainers.image.revision"] == ctx.revision
    assert labels["org.opencontainers.image.created"] == ctx.created == image.config["created"]
    assert labels["org.opencontainers.image.source"].startswith(("https://", "git@"))
    assert labels["org.opencontainers.image.title"] == f"kubetune-{name}"
    assert image.manifest["annotations"] == labels
    # Locked dependencies only; no pip left to install anything else.
    venv = image.rootfs / "opt" / "kubetune"
    assert not (venv / "bin" / "pip").exists()
    assert (venv / "bin" / "python").exists()
    site = venv / "lib" / "python3.11" / "site-packages"
    installed: dict[str, str] = {}
    for dist in site.glob("*.dist-info"):
        dist_name, version = dist.name.removesuffix(".dist-info").rsplit("-", 1)
        installed[image_build.normalize(dist_name)] = version
    assert installed.pop("kubetune") == ctx.version
    assert installed == image_build.pins(image_build.IMAGES[name].lock)


def linked_libraries_missing(image: Image) -> list[str]:
    """Shared objects of the venv whose libraries the dynamic loader cannot find."""
    script = (
        'find /opt/kubetune -name "*.so*" -type f | while read -r f; do'
        ' ldd "$f" 2>/dev/null | grep "not found" | sed "s|^|$f: |"; done'
    )
    proc = subprocess.run(
        image.sandbox(["sh", "-c", script], entrypoint=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


# -- the operator image ---------------------------------------------------------------------------
def test_operator_image_matches_the_pods(operator_image: Image) -> None:
    check_common(operator_image, "operator")
    assert operator_image.config["config"]["Entrypoint"] == ["kubetune", "operator", "run"]
    assert "8080/tcp" in operator_image.config["config"]["ExposedPorts"]
    site = operator_image.rootfs / "opt/kubetune/lib/python3.11/site-packages"
    assert not (site / "torch").exists()  # the operator image has no torch
    assert linked_libraries_missing(operator_image) == []


def test_operator_starts_and_answers_healthz(operator_image: Image, tmp_path: Path) -> None:
    """No API server reachable: the process still starts, serves /healthz and /metrics, and
    keeps retrying the API (kopf), instead of crashing on an import or a missing library."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    port = free_port()
    argv = operator_image.sandbox(
        ["--standalone", "--metrics-port", str(port), "--kubeconfig", "/tmp/kubeconfig"],
        ro_binds={"/tmp/kubeconfig": kubeconfig},
    )
    log = tmp_path / "operator.log"
    with running(argv, log) as proc:

        def healthz() -> str | None:
            assert proc.poll() is None, f"the operator exited {proc.returncode}:\n{tail(log)}"
            try:
                return http_get(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                return None

        assert wait_until(healthz, timeout=60, what="/healthz").startswith("ok")
        assert "kubetune_operator_leader" in http_get(f"http://127.0.0.1:{port}/metrics")
        wait_until(lambda: "127.0.0.1:9" in log.read_text(), timeout=30, what="an API call")
        assert proc.poll() is None, tail(log)


def test_operator_image_leads_the_dev_cluster(
    operator_image: Image, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The image's operator, with the least-privilege ServiceAccount token, takes the lease
    and drives a job: validation pod (as the image's uid), gang, Running."""
    from tests.e2e import operator_helpers as oh

    kubeconfig = oh.install(cluster, tmp_path)
    oh.restricted_namespace(cluster, namespace)
    port = free_port()
    env = {f"KUBETUNE_OPERATOR_{k}": v for k, v in oh.TEST_SETTINGS.items()}
    env["KUBETUNE_OPERATOR_LEASE_NAMESPACE"] = oh.OPERATOR_NAMESPACE
    argv = operator_image.sandbox(
        ["--kubeconfig", "/tmp/kubeconfig", "--metrics-port", str(port), "--id", "image"],
        ro_binds={"/tmp/kubeconfig": kubeconfig},
        env=env,
    )
    log = tmp_path / "operator.log"
    with running(argv, log) as proc:

        def leading() -> bool:
            assert proc.poll() is None, f"the operator exited {proc.returncode}:\n{tail(log)}"
            try:
                return "kubetune_operator_leader 1.0" in http_get(
                    f"http://127.0.0.1:{port}/metrics"
                )
            except OSError:
                return False

        wait_until(leading, timeout=90, what="the image's operator to lead")
        assert http_get(f"http://127.0.0.1:{port}/healthz").startswith("ok leader")
        oh.apply(cluster, oh.manifest("image-smoke", namespace))
        (pod,) = wait_until(
            lambda: oh.pods(cluster, namespace, "image-smoke", role="validation"),
            timeout=60,
            what="the validation pod",
        )
        security = pod["spec"]["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == operator_image.user
        oh.finish_validation(cluster, namespace, "image-smoke")
        try:
            oh.wait_phase(cluster, namespace, "image-smoke", "Running", timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{tail(log)}") from exc
        assert proc.poll() is None, tail(log)


# -- the trainer image ----------------------------------------------------------------------------
def test_trainer_image_matches_the_pods(trainer_image: Image) -> None:
    check_common(trainer_image, "trainer")
    config = trainer_image.config["config"]
    assert config["Entrypoint"] == ["python", "-m", "kubetune_trainer"]
    assert {"9400/tcp", "29400/tcp"} <= set(config["ExposedPorts"])
    # the revision the lineage records
    assert trainer_image.env["KUBETUNE_GIT_REVISION"] == trainer_image.report["revision"]
    assert trainer_image.env["HF_HUB_OFFLINE"] == "1"
    # libcuda comes with the node's driver; the optional transports of NVSHMEM (UCX, MPI,
    # libfabric, PMIx) and Triton's test plugins are loaded only on demand.
    optional = ("libcuda.so", "/nvshmem_", "/triton/plugins/")
    missing = [
        line
        for line in linked_libraries_missing(trainer_image)
        if not any(marker in line for marker in optional)
    ]
    assert missing == []
    probe = (
        "import boto3, deepspeed, peft, torch, transformers, trl\n"
        "print(torch.__version__, torch.version.cuda, deepspeed.__version__)\n"
    )
    proc = subprocess.run(
        trainer_image.sandbox(["python", "-c", probe], entrypoint=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lock = image_build.pins(image_build.IMAGES["trainer"].lock)
    torch_version, cuda, deepspeed_version = proc.stdout.split()[-3:]
    assert torch_version.split("+")[0] == lock["torch"] and cuda != "None"
    assert deepspeed_version == lock["deepspeed"]


BUILD_ASSETS = """
import sys
from pathlib import Path
from kubetune_trainer.assets.sample_data import chat_rows, corpus_from_rows, write_jsonl
from kubetune_trainer.models.tiny import TinyModelSpec, build_tiny_model, default_corpus
root = Path(sys.argv[1])
write_jsonl(chat_rows(48, seed=1, max_items=8), root / "datasets" / "chat.jsonl")
build_tiny_model(
    root / "models" / "tiny-llama",
    TinyModelSpec(family="llama", vocab_size=512, hidden_size=64, intermediate_size=128),
    default_corpus() + corpus_from_rows(chat_rows(200, seed=11)),
)
"""


def test_trainer_image_validates_a_job(trainer_image: Image, tmp_path: Path) -> None:
    """The operator's validation pod, run from the image: its command, its env, the job
    document mounted at /etc/kubetune/job.json, the PVCs at /mnt/pvc/<claim> (read-only)."""
    from kubetune.api import FineTuneJob
    from kubetune.api.resolve import resolve
    from kubetune_operator import naming
    from kubetune_operator.render.configmap import render_config_map
    from kubetune_operator.render.validation_pod import render_validation_pod
    from tests.trainer.helpers import manifest

    pvc = tmp_path / "pvc"
    for claim in ("models", "datasets", "checkpoints"):
        (pvc / claim).mkdir(parents=True)
    pvc.chmod(0o755)
    # A tiny model and data, made by the image itself (its torch, transformers, tokenizers).
    assets = subprocess.run(
        trainer_image.sandbox(
            ["python", "-c", BUILD_ASSETS, "/mnt/pvc"],
            binds={"/mnt/pvc": pvc},
            entrypoint=False,
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert assets.returncode == 0, assets.stderr[-3000:]
    doc = manifest(
        "lora",
        "pvc://models/tiny-llama",
        "pvc://datasets/chat.jsonl",
        "chat",
        "pvc://checkpoints/run-1",
        eval_split=0.1,
        peft={"lora": {"r": 2}},
    )
    doc["metadata"]["uid"] = "0000-image-smoke"
    job = FineTuneJob.model_validate(doc)
    config_map = render_config_map(job, resolve(job))
    (tmp_path / "job.json").write_text(config_map["data"][naming.CONFIG_KEY])
    pod = render_validation_pod(job, 1, SETTINGS)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    ro_binds = {"/etc/kubetune/job.json": tmp_path / "job.json"}
    for mount in container["volumeMounts"]:
        if mount["mountPath"].startswith(str(SETTINGS.pvc_mount_root)):
            assert mount["readOnly"] is True  # validation never writes to a claim
            ro_binds[mount["mountPath"]] = pvc / Path(mount["mountPath"]).name
    proc = subprocess.run(
        trainer_image.sandbox(container["command"], ro_binds=ro_binds, env=env, entrypoint=False),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "validation passed" in proc.stdout, proc.stdout[-2000:]
    assert not (pvc / "checkpoints" / "run-1").exists()  # nothing written
