"""Submit a benchmark spec to SLURM: a scorer job, one array job per method (a task per seed) that finds
the scorer through the rendezvous file, and a report job after them. The rendered scripts are kept beside
the runs (``<runs>/slurm/*.sbatch``) so they can be read and resubmitted by hand."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Sequence

from pydantic import AfterValidator, Field, model_validator

from harness.launch.benchmark import default_locations, from_spec, load_spec, missing_policies
from harness.config import StrictModel, load_config, read_text
from harness.errors import UserError
from harness.paths import esgrpo_home
from harness.records import atomic_write_text
from harness.sweep import spec_points
from harness.scoring.client import http_scorer_overrides
from harness.registry import get_method
from scorer.service_config import load_service_config

TEMPLATES = Path(__file__).resolve().parents[2] / "containers" / "slurm"
JOBS_FILE = "jobs.json"


def _plain(value: str) -> str:
    """A cluster-file text that reaches a script: no newline or other control character (one would start a new
    shell line inside the rendered sbatch script)."""
    if bad := [c for c in value if ord(c) < 32 or ord(c) == 127]:
        raise ValueError(f"must not hold control characters (found {bad[0]!r})")
    return value


def _word(value: str) -> str:
    """An #SBATCH value (account, partition, time, memory): one word of letters, digits and . _ - : + , @ %."""
    if not re.fullmatch(r"[A-Za-z0-9._:+,@%-]+", value):
        raise ValueError("must be one word of letters, digits and . _ - : + , @ % (no spaces, quotes or newlines)")
    return value


def _directive(value: str) -> str:
    """One extra #SBATCH directive: an option (``--qos=high``), no control characters."""
    if not _plain(value).startswith("-"):
        raise ValueError("must be one sbatch option, starting with '-' (e.g. --qos=high)")
    return value


Plain = Annotated[str, AfterValidator(_plain)]
Word = Annotated[str, AfterValidator(_word)]
Directive = Annotated[str, AfterValidator(_directive)]


class JobResources(StrictModel):
    nodes: int = Field(1, gt=0)  # > 1: ES starts a Ray cluster over them, GRPO launches accelerate on each
    gpus: int = Field(0, ge=0)  # per node
    cpus: int = Field(2, gt=0)  # per node
    mem: Word | None = None  # e.g. "64G"; None: the partition's default per CPU
    time: Word | None = None  # overrides the cluster's time limit


class ClusterSettings(StrictModel):
    account: Word | None = None
    partition: Word | None = None
    time: Word = "04:00:00"
    scorer: JobResources = Field(default_factory=lambda: JobResources(cpus=1))
    methods: dict[str, JobResources] = Field(default_factory=dict)  # per method or evaluation entry
    evaluate: JobResources = Field(default_factory=JobResources)  # an evaluation entry not named in methods
    runtime: Literal["native", "apptainer", "docker"] = "native"
    image: Plain | None = None  # .sif file (apptainer) or image name (docker)
    scorer_host: Word = "0.0.0.0"  # reachable from the method jobs' nodes; protected by a generated token
    scorer_wait_s: float = Field(1800, gt=0)
    grace_s: int = Field(120, gt=0)  # SIGTERM this long before the time limit, for a last checkpoint
    extra_directives: list[Directive] = Field(default_factory=list)  # e.g. ["--qos=high"]
    # more host paths the containers must see (apptainer --bind, docker -v); every path the spec reaches (policy,
    # data, scorer models, runs, $ESGRPO_HOME) is bound without being listed here
    binds: list[Plain] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _scorer_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scorer_config" in data:
            raise ValueError("scorer_config: the spec names the scorer its jobs serve (scorer_service: in the "
                             "benchmark spec); the cluster file says only where it runs. Remove this key")
        return data

    def placeholders(self) -> list[str]:
        """Values copied from an example that no real cluster has: submit refuses them."""
        out = [f"{k}: {v}" for k, v in (("account", self.account), ("partition", self.partition))
               if v and PLACEHOLDER.search(v)]
        if self.runtime == "apptainer" and self.image and not Path(self.image).is_file():
            out.append(f"image: {self.image} not found (build it with `make apptainer`)")
        if self.runtime != "native" and not self.image:
            out.append(f"image: not set (runtime {self.runtime} needs one)")
        return out


PLACEHOLDER = re.compile(r"^(my|your)[-_]|^<.*>$|example|changeme", re.I)
BUILTIN_SCORER = Path(__file__).resolve().parents[2] / "configs" / "scorer" / "builtin.yaml"


def directives(c: ClusterSettings, r: JobResources) -> str:
    lines = [f"--cpus-per-task={r.cpus}"]
    lines += [f"--nodes={r.nodes}", "--ntasks-per-node=1"] if r.nodes > 1 else []
    lines += [f"--account={c.account}"] if c.account else []
    lines += [f"--partition={c.partition}"] if c.partition else []
    lines += [f"--gres=gpu:{r.gpus}"] if r.gpus else []
    lines += [f"--mem={r.mem}"] if r.mem else []
    lines += [f"--time={r.time}"] if r.time else []
    lines += c.extra_directives
    return "\n".join(f"#SBATCH {x}" for x in lines)


def wrapper(c: ClusterSettings, r: JobResources, workdir: Path, binds: Sequence[Path] = ()) -> str:
    """The prefix that runs ``esgrpo`` natively, in an Apptainer image or in a Docker container, with the working
    directory and ``binds`` visible at the same paths inside."""
    if c.runtime == "native":
        return ""
    if not c.image:
        raise UserError(f"runtime '{c.runtime}' needs 'image'")
    w, image = q(workdir), q(c.image)
    paths = outermost([workdir, *binds])
    if c.runtime == "apptainer":
        return f"apptainer exec {'--nv ' if r.gpus else ''}--bind {q(','.join(map(str, paths)))} {image}"
    mounts = " ".join(f"-v {q(f'{p}:{p}')}" for p in paths)
    return (f"docker run --rm {'--gpus all ' if r.gpus else ''}--network host {mounts} "
            f"-w {w} -e ESGRPO_SCORER_TOKEN --entrypoint '' {image}")


def outermost(paths: Sequence[Path]) -> list[Path]:
    """The paths, resolved, without those inside another one, in their first order."""
    resolved = list(dict.fromkeys(Path(p).resolve() for p in paths))
    return [p for p in resolved if not any(o != p and p.is_relative_to(o) for o in resolved)]


def service_config(spec_path: Path) -> Path:
    """The scorer config the spec's scorer job serves: the spec's ``scorer_service``. A spec on the built-in
    scorer may leave it out; any other must name it, so that no 7B run is scored by the keyword stand-in."""
    spec, _ = load_spec(spec_path)
    if spec.scorer_service:
        return (spec_path.resolve().parent / spec.scorer_service).resolve()
    if spec.run.scorer.kind == "builtin":
        return BUILTIN_SCORER
    raise UserError(f"{spec_path}: scorer_service: not set, and its runs score with a {spec.run.scorer.kind} "
                    "scorer: name the scorer config its cluster job serves (e.g. scorer_service: "
                    "../configs/scorer/beaver-7b.yaml)")


def scorer_configs(spec_path: Path) -> list[Path]:
    """The scorer configs this spec's jobs load: the served one (when the spec trains), and the spec's own
    embedded one (evaluations and runs that score in-process)."""
    spec, _ = load_spec(spec_path)
    configs = [service_config(spec_path)] if spec.methods else []
    if spec.run.scorer.kind == "embedded" and spec.run.scorer.config:
        configs.append(from_spec(spec_path.resolve(), spec.run.scorer.config).resolve())
    return configs


def spec_paths(spec_path: Path, cluster: ClusterSettings, runs: Path) -> list[Path]:
    """Every host path a job of this spec reads or writes: the spec, its policies, its prompt files, the
    scorers' configs and models, the runs, ``$ESGRPO_HOME`` and the cluster file's own ``binds``."""
    spec, _ = load_spec(spec_path)
    s = spec.run
    paths = [spec_path.resolve().parent, runs, esgrpo_home()]
    paths += [Path(p) for p in (s.policy, *(e.policy for e in spec.evaluate.values())) if p != "builtin"]
    for src in (s.data, s.data.eval):
        if src is not None and src.path:
            paths.append(Path(src.path).parent)
    for config in scorer_configs(spec_path):
        scorer = load_service_config(config)
        paths += [config.parent, *(Path(b.path) for b in (scorer.reward, scorer.cost) if b.path)]
    return [*paths, *map(Path, cluster.binds)]


def q(value: object) -> str:
    """A value as one shell word."""
    return shlex.quote(str(value))


def sbatch_path(path: Path) -> str:
    """A path for a double-quoted ``#SBATCH`` value: sbatch reads double quotes, not the shell's other quoting."""
    text = str(path)
    if any(c in text for c in '"$`\\\n%'):
        raise UserError(f"{text}: SLURM log paths cannot hold quotes, '$', '`', '%', backslashes or newlines")
    return text


def executable(c: ClusterSettings, name: str = "esgrpo") -> str:
    """Natively, this installation's own ``esgrpo`` (or ``ray``, ``accelerate``: jobs need not have the venv on
    PATH); in an image, its own."""
    here = Path(sys.executable).parent / name
    return str(here) if c.runtime == "native" and here.is_file() else name


MULTI_NODE_HEAD = """nodes=($$(scontrol show hostnames "$$SLURM_JOB_NODELIST"))
head_ip=$$(srun --nodes=1 --ntasks=1 -w "$${nodes[0]}" hostname --ip-address | awk '{print $$1}')
port=$$((20000 + SLURM_JOB_ID % 20000))"""


def launch(c: ClusterSettings, r: JobResources, method: str, workdir: Path, run: str,
           binds: Sequence[Path] = ()) -> str:
    """The shell lines that start one seed of ``method`` (``run``: its ``esgrpo benchmark ...`` arguments) in the
    background as $child. One node: directly. Several: ES (Ray launcher) starts a private Ray cluster over the
    allocation, with a per-job auth token, and its engines join it; GRPO (accelerate launcher) runs accelerate on
    every node, machine rank from SLURM."""
    wrap = wrapper(c, r, workdir, binds)
    esgrpo = q(executable(c))
    launcher = get_method(method).launcher
    processes = r.nodes * max(r.gpus, 1)
    if launcher == "accelerate" and r.nodes == 1 and processes > 1:  # one process per GPU of this node
        return (f"{wrap} {q(executable(c, 'accelerate'))} launch --num_processes {processes} -m harness.launch.cli {run} &"
                "\nchild=$$!")
    if r.nodes == 1:
        return f"{wrap} {esgrpo} {run} &\nchild=$$!"
    gres = f" --gres=gpu:{r.gpus}" if r.gpus else ""
    step = f'srun --nodes=1 --ntasks=1{gres} -w'
    if launcher == "ray":
        ray = q(executable(c, "ray"))
        common = f"--num-cpus={r.cpus} --num-gpus={r.gpus} --temp-dir=/tmp/ray-$$SLURM_JOB_ID --disable-usage-stats --block"
        return "\n".join([
            "# a private Ray cluster over this job's nodes: its own token, port and temporary folder",
            "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$$(cat ${ray_token})", MULTI_NODE_HEAD,
            f'{step} "$${{nodes[0]}}" {wrap} {ray} start --head --node-ip-address="$$head_ip" --port=$$port {common} &',
            'sleep 10',
            f'for n in "$${{nodes[@]:1}}"; do {step} "$$n" {wrap} {ray} start --address="$$head_ip:$$port" {common} & done',
            f'{wrap} {esgrpo} {run} ' + " ".join(f'--set "{o}"' for o in get_method(method).cluster_overrides(
                "$$head_ip:$$port", r.nodes * max(r.gpus, 1))) + " &",
            "child=$$!"])
    return "\n".join([
        "# accelerate on every node (one task per node), the first node's address as the rendezvous", MULTI_NODE_HEAD,
        f'srun --nodes={r.nodes} --ntasks-per-node=1{gres} bash ${{node_script}} "$$head_ip" "$$port" &',
        "child=$$!"])


def node_script(c: ClusterSettings, r: JobResources, workdir: Path, run: str, binds: Sequence[Path] = ()) -> str:
    """What each node's task runs for an accelerate launch: its machine rank is its SLURM node id."""
    return "\n".join([
        "#!/bin/bash",
        "# one node's part of a multi-node accelerate launch (started by the method job with srun, one task per node)",
        f"cd {q(workdir)}",
        f'exec {wrapper(c, r, workdir, binds)} {q(executable(c, "accelerate"))} launch --num_machines "$$SLURM_NNODES" '
        f'--machine_rank "$$SLURM_NODEID" --main_process_ip "$$1" --main_process_port "$$2" '
        f"--num_processes {r.nodes * max(r.gpus, 1)} -m harness.launch.cli {run}", ""])


@dataclass
class Rendered:
    """Every file a submission writes, rendered but not yet written: a dry run prints them, submit writes them."""

    slurm_dir: Path
    out: Path
    scripts: dict[str, str]  # job (scorer, a method, an evaluation, report) -> its sbatch script
    served: str | None  # the scorer config the scorer job serves
    scoring: dict[str, str]  # job -> the scorer it scores with, in words
    files: dict[Path, str] = field(default_factory=dict)  # more files beside them (multi-node accelerate scripts)
    report_name: str = "report.md"  # frontier.md for a sweep

    def path(self, job: str) -> Path:
        return self.slurm_dir / f"{job}.sbatch"

    def write(self) -> dict[str, Path]:
        """The scripts and their per-job secrets (scorer and Ray tokens, 0600) beside the runs."""
        self.slurm_dir.mkdir(parents=True, exist_ok=True)
        for token, make in (("scorer.token", lambda: secrets.token_urlsafe(32)), ("ray.token", lambda: secrets.token_hex(32))):
            if not (self.slurm_dir / token).is_file():
                atomic_write_text(self.slurm_dir / token, make())
                (self.slurm_dir / token).chmod(0o600)
        for path, text in self.files.items():
            path.write_text(text)
        paths = {}
        for job, text in self.scripts.items():
            self.path(job).write_text(text)
            paths[job] = self.path(job)
        return paths


def render(spec_path: Path, cluster: ClusterSettings, runs_dir: Path | None = None, out: Path | None = None,
           run_overrides: Sequence[str] = (), method_overrides: Sequence[str] = ()) -> Rendered:
    """The submission's scripts. ``run_overrides``/``method_overrides``: ``esgrpo benchmark``'s ``--set-run`` and
    ``--set``, passed to every method job (merged key by key into the spec's entries)."""
    spec, raw = load_spec(spec_path)
    family = {label: point.family for label, point in spec_points(raw).items()}  # a sweep point's resources
    scorer_config = service_config(Path(spec_path)) if spec.methods else None
    for config in scorer_configs(Path(spec_path)):
        load_service_config(config)  # a missing or invalid scorer config fails here, not in a job 30 min later
    workdir = Path.cwd().resolve()
    default_runs, default_out = default_locations(spec)
    runs = (runs_dir or default_runs).resolve()
    slurm_dir = runs / "slurm"
    token_file = slurm_dir / "scorer.token"
    out = (out or default_out).resolve()
    rendezvous = slurm_dir / "scorer.json"
    binds = outermost(spec_paths(Path(spec_path), cluster, runs))
    scorer_overrides = http_scorer_overrides(rendezvous=rendezvous, token_file=token_file,
                                             deadline_s=cluster.scorer_wait_s)
    user_overrides = " ".join([*(f"--set-run {q(o)}" for o in run_overrides), *(f"--set {q(o)}" for o in method_overrides)])
    # every value that reaches a shell line is one quoted word; #SBATCH lines get double-quoted paths
    ray_token = slurm_dir / "ray.token"
    common = {"name": spec.name, "time": cluster.time, "last_seed_index": len(spec.seeds) - 1,
              "grace_s": cluster.grace_s, "log_dir": sbatch_path(slurm_dir),
              "workdir": q(workdir), "spec": q(spec_path.resolve()), "runs_dir": q(runs), "out": q(out),
              "rendezvous": q(rendezvous), "token_file": q(token_file), "scorer_config": q(scorer_config or ""),
              "scorer_host": q(cluster.scorer_host),
              "scorer_override": " ".join([*(f"--set-run {q(o)}" for o in scorer_overrides), user_overrides]).strip(),
              "scorer_job": "$SCORER_JOB"}
    rendered = Rendered(slurm_dir, out, {}, str(scorer_config) if scorer_config else None, {},
                        report_name="frontier.md" if family else "report.md")
    eval_scorer = (f"its own embedded scorer ({from_spec(spec_path.resolve(), spec.run.scorer.config).resolve()})"
                   if spec.run.scorer.kind == "embedded" and spec.run.scorer.config else f"the spec's {spec.run.scorer.kind} scorer")
    # the scorer service serves the methods' runs; evaluation entries score in their own process (the spec's scorer)
    for kind in (*(["scorer"] if spec.methods else []), *spec.methods, *spec.evaluate, "report"):
        res = cluster.scorer if kind == "scorer" else cluster.methods.get(
            kind, cluster.methods.get(family.get(kind, kind),
                                      cluster.evaluate if kind in spec.evaluate else JobResources()))
        template = "method" if kind in spec.methods or kind in spec.evaluate else kind
        values = {**common, "method": kind, "esgrpo": q(executable(cluster)),
                  f"directives_{template}": directives(cluster, res),
                  f"wrap_{template}": wrapper(cluster, res, workdir, binds)}
        if kind in spec.evaluate:  # one task: the evaluation of one fixed policy
            values["last_seed_index"] = 0
            values["launch"] = (f"{values['wrap_method']} {values['esgrpo']} benchmark --spec {common['spec']} "
                                f"--runs-dir {common['runs_dir']} --only {kind} &\nchild=$$!")
            values["launch"] = Template(values["launch"]).substitute()
            rendered.scoring[kind] = eval_scorer
        elif template == "method":
            entry = spec.methods[kind]
            run = (f"benchmark --spec {common['spec']} --runs-dir {common['runs_dir']} --only {kind} "
                   f"--seed-index $${{SLURM_ARRAY_TASK_ID}} {common['scorer_override']}")
            script = slurm_dir / f"{kind}-node.sh"
            values["launch"] = Template(launch(cluster, res, entry.method or kind, workdir, run, binds)).substitute(
                ray_token=q(ray_token), node_script=q(script))
            if res.nodes > 1 and get_method(entry.method or kind).launcher == "accelerate":
                rendered.files[script] = Template(node_script(cluster, res, workdir, run, binds)).substitute()
            rendered.scoring[kind] = f"the scorer job's service ({scorer_config})"
        rendered.scripts[kind] = Template((TEMPLATES / f"{template}.sbatch").read_text()).substitute(values)
    return rendered


def sbatch(*args: str) -> str:
    if not shutil.which("sbatch"):
        raise UserError("sbatch not found: submit from a SLURM login node (or start containers/slurm/local-cluster.sh)")
    r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise UserError(f"sbatch {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip().split(";")[0]


def missing_inputs(spec_path: Path, cluster: ClusterSettings) -> list[str]:
    """Models and prompt files the jobs will need that are not where the spec and cluster file say, and
    cluster values left as the example's placeholders."""
    spec, _ = load_spec(spec_path)
    s = spec.run
    missing = [f"cluster file: {p}" for p in cluster.placeholders()]
    if spec.methods and s.policy != "builtin" and not (Path(s.policy) / "config.json").is_file():
        missing.append(f"{spec_path}: run.policy: {s.policy} is not a model folder (no config.json)")
    for where, src in (("run.data", s.data), ("run.data.eval", s.data.eval)):
        if src is not None and src.kind not in ("builtin", "hub") and src.path and not Path(src.path).is_file():
            missing.append(f"{spec_path}: {where}.path: {src.path} not found")
    for scorer_config in scorer_configs(spec_path):
        scorer = load_service_config(scorer_config)
        for which, backend in (("reward", scorer.reward), ("cost", scorer.cost)):
            if backend.path and not Path(backend.path).is_dir():
                missing.append(f"{scorer_config}: {which}.path: {backend.path} not found")
    return missing


def dry_run(spec_path: Path, cluster_path: Path | None, runs_dir: Path | None = None, out: Path | None = None,
            run_overrides: Sequence[str] = (), method_overrides: Sequence[str] = ()) -> str:
    """Every script ``submit`` would send, with the order it sends them in, which scorer each job scores with,
    and what would stop a real submission. Writes nothing."""
    cluster = load_config(ClusterSettings, cluster_path)
    r = render(Path(spec_path), cluster, runs_dir, out, run_overrides, method_overrides)
    spec, _ = load_spec(Path(spec_path))
    skipped = missing_policies(spec, Path(spec_path))
    methods = [m for m in r.scripts if m in spec.methods]
    evaluations = [m for m in r.scripts if m in spec.evaluate and m not in skipped]
    order = "".join(f"# MISSING (submit refuses): {m}\n" for m in missing_inputs(Path(spec_path), cluster))
    order += "".join(f"# MISSING (submit leaves this evaluation out): {m}\n" for m in skipped.values())
    if r.served:
        order += f"# scorer job serves: {r.served}\n"
    order += "".join(f"# {job} scores with {how}\n" for job, how in r.scoring.items())
    jobs = [*(["scorer"] if methods else []), *([", ".join(methods) + " (one array task per seed)"] if methods else []),
            *([", ".join(evaluations) + " (one evaluation each)"] if evaluations else [])]
    order += (f"# submit order: {'; '.join(jobs)}; report --dependency=afterany:<the jobs above>\n"
              if methods or evaluations else "# nothing to submit: every entry's policy is missing\n")
    order += f"# report: {r.out}/{r.report_name}\n# a dry run writes nothing: the scripts go to {r.slurm_dir} on submit\n"
    return order + "".join(f"\n# ===== {r.path(job)} =====\n{text}" for job, text in r.scripts.items())


def submit(spec_path: Path, cluster_path: Path | None, runs_dir: Path | None = None, out: Path | None = None,
           run_overrides: Sequence[str] = (), method_overrides: Sequence[str] = ()) -> dict[str, str]:
    cluster = load_config(ClusterSettings, cluster_path)
    missing = missing_inputs(Path(spec_path), cluster)
    if missing:  # jobs would start, wait for GPUs, then fail on the first file
        raise UserError("not ready to submit; point the spec, the scorer config and the cluster file at your "
                        "copies:\n  " + "\n  ".join(missing))
    spec, _ = load_spec(Path(spec_path))
    skipped = missing_policies(spec, Path(spec_path))
    entries = [*spec.methods, *(e for e in spec.evaluate if e not in skipped)]
    if not entries:
        raise UserError("no evaluation policy found; point the spec at your copies:\n  " + "\n  ".join(skipped.values()))
    r = render(Path(spec_path), cluster, runs_dir, out, run_overrides, method_overrides)
    made = [d for d in (r.slurm_dir.parent, r.slurm_dir) if not d.exists()]  # what a refusal takes away again
    scripts = r.write()
    jobs: dict[str, str] = {}
    try:
        if "scorer" in scripts:
            jobs["scorer"] = sbatch(str(scripts["scorer"]))
        for m in entries:  # one at a time: each id is kept the moment it exists
            jobs[m] = sbatch(str(scripts[m]))
        report = scripts["report"]
        report.write_text(report.read_text().replace("$SCORER_JOB", jobs.get("scorer", "")))
        jobs["report"] = sbatch(f"--dependency=afterany:{':'.join(jobs[m] for m in entries)}", str(report))
    except UserError as e:  # half a submission would hold a scorer (and GPUs) for runs that never come
        if jobs:
            subprocess.run(["scancel", *jobs.values()], capture_output=True)
            raise UserError(f"{e}\n  cancelled the jobs already submitted "
                            f"({', '.join(f'{k} {v}' for k, v in jobs.items())}); the scripts are in {r.slurm_dir}") from None
        for d in reversed(made):  # nothing was submitted: nothing is left behind
            shutil.rmtree(d, ignore_errors=True)
        raise
    report_path = f"{r.out}/{r.report_name}"
    atomic_write_text(r.slurm_dir / JOBS_FILE, json.dumps({"jobs": jobs, "report": report_path}, indent=1))
    return {**jobs, "report_path": report_path, "slurm_dir": str(r.slurm_dir)}


def status(slurm_dir: Path) -> str:
    jobs = Path(slurm_dir) / JOBS_FILE
    try:
        info = json.loads(read_text(jobs, "jobs file (written by `esgrpo slurm submit`)"))
        ids = ",".join(info["jobs"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{jobs}: not a jobs file written by `esgrpo slurm submit`") from None
    r = subprocess.run(["squeue", "-h", "-t", "all", "-j", ids, "-o", "%.18i %.12j %.10T %.10M %R"],
                       capture_output=True, text=True)
    return r.stdout + f"report: {info['report']}"
