#!/usr/bin/env python3
"""The Python side of the POPri round benchmark: one round written with transformers,
sentence-transformers, PEFT and numpy, as a Python user would write it.

It mirrors the round of a fedsyn run directory (``--run-dir``, written by ``fedsyn simulate``):
the settings come from its ``config.toml`` (J, K, sampling, clip, rejected rank, LoRA, DPO), the
J public prompts from its ``prompts.json``, the noise multiplier σ from its ``metrics.jsonl``.

1. generate: the SmolLM2-135M-Instruct Q4_1 GGUF (``FEDSYN_SMOLLM2_GGUF`` in .cache/models.env)
   loaded by transformers (``gguf_file=``, dequantised to fp32, CPU); each prompt repeated K
   times, prompt-major, in batches of ``generation.batch_size`` rows, left-padded;
   ``generate(do_sample=True, temperature, top_p, top_k=0, max_new_tokens,
   stop_strings=["Original Text Sample"])``; each text cut at the stop string, then cleaned as
   fedsyn cleans it (cut at the first "Orig", whitespace flattened) and cut to
   ``generation.truncate_tokens`` generator tokens.
2. embed: sentence-transformers ``encode`` of the J·K candidates (all-MiniLM-L6-v2 from
   ``FEDSYN_MINILM_DIR``, batch 64, L2-normalised).
3. score: every client's score vector: cosine of each candidate with each of the client's
   texts, summed over the texts, standardised (population std; zero vector when the std is 0)
   and clipped to L2 norm ``privacy.clip``; the server sums them. The clients' texts are
   embedded before the round, untimed (fedsyn caches client embeddings across runs, so its
   round does not embed them either).
4. aggregate: Gaussian noise of std σ·C (numpy); per prompt, chosen = rank 0 and
   rejected = rank ``pairs.rejected_rank`` of the noisy scores.
5. dpo: one epoch of DPO on the J pairs with a PEFT LoRA adapter (``lora.r``, ``lora.alpha``,
   dropout 0, the seven projections): the pairs tokenised as fedsyn and TRL do (prompt as
   sampled, keeping its last ``max_prompt_length`` tokens; each completion without special
   tokens, EOS appended, cut to ``max_length``); the reference log-probabilities once per pair
   at the start, adapter disabled, no gradient, 2·batch pairs per forward (as fedsyn); then
   shuffled micro-batches of ``dpo.batch_size`` pairs, sigmoid loss (β ``dpo.beta``),
   backward, ``clip_grad_norm_(max_grad_norm)``, ``torch.optim.AdamW`` at a constant
   ``dpo.lr``. Log-probabilities as TRL computes them (dpo_step_anchor.log_probs).

The clients: one per State of the Union address (``FEDSYN_SOTU_DIR``), each address cut into
sentence-aligned passages of at most 300 words, ``data.max_texts_per_client`` of them kept at
random and ``round(eval_fraction · n)`` (at least 1) held out, as fedsyn does; the passages and
the random draws are this script's own, so the texts differ from fedsyn's but the counts (233
clients × 7 texts in the demo) are the same, and so is the work of the score phase.

Model loading is excluded from the phases and reported as ``load_seconds``. One untimed
warm-up ``generate`` (2 rows × 4 tokens) runs before the round (fedsyn's generator is warm
from writing the seed pool). ``--threads`` torch threads. Peak RSS is ``ru_maxrss`` of this
interpreter, which runs nothing else.

Usage:
    .venv-bench/bin/python benches/python/popri_round_anchor.py --run-dir RUN > python.json
    .venv-bench/bin/python benches/python/popri_round_anchor.py --fedsyn-round RUN \
        --peak-rss-kib KIB > fedsyn.json          (the fedsyn round's row, as this script's JSON)
    .venv-bench/bin/python benches/python/popri_round_anchor.py --markdown fedsyn.json python.json
"""

import argparse
import json
import random
import re
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor_common import (load_gguf_model, models_env, offline, peak_rss_mib,  # noqa: E402
                           stack_text, versions)
from dpo_step_anchor import TARGETS, batch as sequence_batch, log_probs  # noqa: E402

PHASES = ("generate", "embed", "score", "aggregate", "dpo")
STOP_STRING = "Original Text Sample"
EMBED_BATCH = 64
MAX_PASSAGE_WORDS = 300
MIN_PASSAGE_WORDS = 20
# A sentence ends at . ? ! (closing quotes/brackets allowed) before a word that starts with a
# capital or a digit; a rougher rule than fedsyn's, enough to cut passages of similar size.
SENTENCE_END = re.compile(r"(?<=[.?!])[\"')\]]*\s+(?=[\"'(\[]*[A-Z0-9])")


# ---------------------------------------------------------------------------------------------
# The run to mirror


def read_run(run_dir: Path) -> dict:
    """The fedsyn run's configuration, prompts and σ."""
    config_path = run_dir / "config.toml"
    prompts_path = run_dir / "prompts.json"
    if not config_path.is_file() or not prompts_path.is_file():
        sys.exit(f"{run_dir} is not a fedsyn run directory (config.toml and prompts.json are "
                 f"written by `fedsyn simulate --out {run_dir}`)")
    config = tomllib.loads(config_path.read_text())
    prompts = json.loads(prompts_path.read_text())
    return {"config": config, "prompts": prompts, "sigma": read_sigma(run_dir)}


def read_sigma(run_dir: Path) -> float:
    rows = metrics_rows(run_dir)
    if not rows:
        sys.exit(f"{run_dir}/metrics.jsonl has no finished round: σ is read from it")
    return float(rows[0]["sigma"])


def metrics_rows(run_dir: Path) -> list:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        sys.exit(f"{path} is missing: run `fedsyn simulate` into {run_dir} first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# The clients' data (embedded before the round, untimed)


def passages(text: str) -> list:
    """Whole sentences packed into passages of at most MAX_PASSAGE_WORDS words; a passage
    under MIN_PASSAGE_WORDS joins its predecessor."""
    packed = []
    for sentence in SENTENCE_END.split(text):
        words = sentence.split()
        for start in range(0, len(words), MAX_PASSAGE_WORDS):
            piece = words[start:start + MAX_PASSAGE_WORDS]
            if packed and len(packed[-1]) + len(piece) <= MAX_PASSAGE_WORDS:
                packed[-1].extend(piece)
            else:
                packed.append(list(piece))
    merged = []
    for words in packed:
        if merged and len(words) < MIN_PASSAGE_WORDS:
            merged[-1].extend(words)
        else:
            merged.append(words)
    return [" ".join(words) for words in merged if words]


def client_train_texts(sotu_dir: Path, max_texts: int, eval_fraction: float, seed: int) -> list:
    """One list of training texts per address: `max_texts` passages drawn at random, of which
    round(eval_fraction · n) (at least 1 when n ≥ 2) are held out."""
    files = sorted(sotu_dir.glob("*.txt"))
    if not files:
        sys.exit(f"{sotu_dir} holds no State of the Union addresses: run scripts/setup.sh")
    clients = []
    for path in files:
        texts = passages(path.read_text(encoding="utf-8"))
        rng = random.Random(f"{seed}/{path.stem}")
        if max_texts:
            texts = rng.sample(texts, min(max_texts, len(texts)))
        held_out = 0
        if len(texts) >= 2 and eval_fraction > 0:
            held_out = min(max(round(eval_fraction * len(texts)), 1), len(texts) - 1)
        clients.append(texts[held_out:])
    return clients


# ---------------------------------------------------------------------------------------------
# The round's phases


def clean_candidate(text: str) -> str:
    """fedsyn's cleaning: cut at the first "Orig" (the model starts another sample), flatten
    whitespace."""
    cut = text.find("Orig")
    return " ".join((text if cut < 0 else text[:cut]).split())


def truncate_tokens(tokenizer, text: str, limit: int) -> str:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= limit:
        return text
    return tokenizer.decode(ids[:limit], skip_special_tokens=True).strip()


def generate_candidates(model, tokenizer, prompts: list, generation: dict) -> list:
    import torch

    per_prompt = generation["candidates_per_prompt"]
    rows = [prompt for prompt in prompts for _ in range(per_prompt)]
    texts = []
    for start in range(0, len(rows), generation["batch_size"]):
        inputs = tokenizer(rows[start:start + generation["batch_size"]], padding=True,
                           add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs, do_sample=True, temperature=generation["temperature"],
                top_p=generation["top_p"], top_k=0,
                max_new_tokens=generation["max_new_tokens"], stop_strings=[STOP_STRING],
                tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs.input_ids.shape[1]:]
        for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
            text = text.split(STOP_STRING, 1)[0]
            texts.append(truncate_tokens(tokenizer, clean_candidate(text),
                                         generation["truncate_tokens"]))
    return texts


def score_sum(candidates, clients: list, clip: float):
    """Σ over clients of each client's standardised, clipped score vector (numpy, float64)."""
    import numpy as np

    total = np.zeros(candidates.shape[0])
    for embeddings in clients:
        scores = (candidates @ embeddings.T).sum(axis=1).astype(np.float64)
        std = scores.std()
        if not np.isfinite(std) or std <= 1e-9 * np.abs(scores).max(initial=1.0):
            continue  # identical similarities: the zero vector
        scores = (scores - scores.mean()) / std
        norm = np.linalg.norm(scores)
        total += scores * min(1.0, clip / norm)
    return total


def preference_pairs(noisy, prompts: int, per_prompt: int, rejected_rank: int) -> list:
    """(prompt, chosen index, rejected index) per prompt, ranked by noisy score."""
    import numpy as np

    pairs = []
    for j in range(prompts):
        block = noisy[j * per_prompt:(j + 1) * per_prompt]
        order = np.argsort(-block, kind="stable")
        pairs.append((j, j * per_prompt + int(order[0]),
                      j * per_prompt + int(order[rejected_rank])))
    return pairs


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, dpo: dict) -> dict:
    """TRL's (and fedsyn's) preparation: the prompt keeps its last max_prompt_length tokens,
    each completion gets EOS and is cut to what max_length leaves."""
    encode = (lambda text: tokenizer(text, add_special_tokens=False).input_ids if text else [])
    prompt_ids = encode(prompt)[-dpo["max_prompt_length"]:]
    room = dpo["max_length"] - len(prompt_ids)
    eos = tokenizer.eos_token_id
    return {"prompt": prompt_ids, "chosen": (encode(chosen) + [eos])[:room],
            "rejected": (encode(rejected) + [eos])[:room]}


def train_dpo(model, tokenizer, pairs: list, dpo: dict, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    tokenized = [tokenize_pair(tokenizer, *pair, dpo) for pair in pairs]
    # Reference log-probabilities once per pair, adapter off, as fedsyn computes them.
    reference = []
    with torch.no_grad(), model.disable_adapter():
        for start in range(0, len(tokenized), 2 * dpo["batch_size"]):
            chunk = tokenized[start:start + 2 * dpo["batch_size"]]
            scores = log_probs(model, *sequence_batch(chunk))
            reference.extend(zip(scores[:len(chunk)].tolist(), scores[len(chunk):].tolist()))
    reference = torch.tensor(reference)

    params = [p for p in model.parameters() if p.requires_grad]
    b1, b2 = dpo["betas"]
    optimizer = torch.optim.AdamW(params, lr=dpo["lr"], betas=(b1, b2), eps=dpo["eps"],
                                  weight_decay=dpo["weight_decay"])
    order = torch.randperm(len(tokenized), generator=torch.Generator().manual_seed(seed))
    losses, correct = [], 0
    for _ in range(dpo["epochs"]):
        for start in range(0, len(order), dpo["batch_size"]):
            rows = order[start:start + dpo["batch_size"]]
            n = len(rows)
            policy = log_probs(model, *sequence_batch([tokenized[i] for i in rows]))
            ref = reference[rows]
            chosen_reward = dpo["beta"] * (policy[:n] - ref[:, 0])
            rejected_reward = dpo["beta"] * (policy[n:] - ref[:, 1])
            loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
            loss.backward()
            if dpo["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(params, dpo["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            correct += int((chosen_reward > rejected_reward).sum())
    return {"steps": len(losses), "mean_loss": sum(losses) / len(losses),
            "reward_accuracy": correct / (len(tokenized) * dpo["epochs"])}


# ---------------------------------------------------------------------------------------------
# The benchmark


def run(args) -> None:
    offline()
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    mirrored = read_run(args.run_dir)
    config, prompts, sigma = mirrored["config"], mirrored["prompts"], mirrored["sigma"]
    generation, dpo, lora = config["generation"], config["dpo"], config["lora"]
    clip, seed = config["privacy"]["clip"], config["run"]["seed"]
    env = models_env()
    gguf_path = Path(env["FEDSYN_SMOLLM2_GGUF"])

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.padding_side = "left"
    dtype = args.dtype if args.dtype != "auto" else run_dtype(config)
    model = load_gguf_model(gguf_path, dtype)
    model = get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora.get("targets", TARGETS), bias="none", task_type="CAUSAL_LM"))
    embedder = SentenceTransformer(env["FEDSYN_MINILM_DIR"], device="cpu")
    load_seconds = time.perf_counter() - start

    # Before the round, untimed: the clients' embeddings (cached by fedsyn) and a warm-up.
    start = time.perf_counter()
    data = config["data"]
    client_texts = client_train_texts(Path(env["FEDSYN_SOTU_DIR"]),
                                      data.get("max_texts_per_client") or 0,
                                      data.get("eval_fraction", 0.0), seed)
    flat = [text for texts in client_texts for text in texts]
    flat_embeddings = embedder.encode(flat, batch_size=EMBED_BATCH, convert_to_numpy=True,
                                      normalize_embeddings=True)
    bounds = np.cumsum([0] + [len(texts) for texts in client_texts])
    clients = [flat_embeddings[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    client_embed_seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    model.eval()
    with torch.no_grad():
        warm = tokenizer(prompts[:2], padding=True, add_special_tokens=False,
                         return_tensors="pt")
        model.generate(**warm, do_sample=True, max_new_tokens=4, min_new_tokens=4,
                       pad_token_id=tokenizer.pad_token_id)

    seconds = {}
    round_start = time.perf_counter()
    clock = time.perf_counter()
    candidates = generate_candidates(model, tokenizer, prompts, generation)
    seconds["generate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    embeddings = embedder.encode(candidates, batch_size=EMBED_BATCH, convert_to_numpy=True,
                                 normalize_embeddings=True)
    seconds["embed"] = time.perf_counter() - clock

    clock = time.perf_counter()
    clean_sum = score_sum(embeddings, clients, clip)
    seconds["score"] = time.perf_counter() - clock

    clock = time.perf_counter()
    noisy = clean_sum + np.random.default_rng(args.seed).normal(0.0, sigma * clip,
                                                                clean_sum.shape)
    ranked = preference_pairs(noisy, len(prompts), generation["candidates_per_prompt"],
                              config["pairs"]["rejected_rank"])
    seconds["aggregate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    model.train()  # as a trainer runs it (the adapter has no dropout)
    pairs = [(prompts[j], candidates[c], candidates[r]) for j, c, r in ranked]
    dpo_result = train_dpo(model, tokenizer, pairs, dpo, args.seed)
    seconds["dpo"] = time.perf_counter() - clock
    total = time.perf_counter() - round_start

    peak_rss = peak_rss_mib()  # of the round, before the report tokenises the candidates
    print(json.dumps({
        "tool": "python",
        "run_dir": str(args.run_dir),
        "prompts": len(prompts),
        "per_prompt": generation["candidates_per_prompt"],
        "max_new_tokens": generation["max_new_tokens"],
        "clients": len(clients),
        "client_texts": len(flat),
        "sigma": sigma,
        "threads": torch.get_num_threads(),
        "generator_dtype": dtype,
        "seconds": seconds,
        "total_seconds": total,
        "load_seconds": load_seconds,
        "client_embed_seconds": client_embed_seconds,
        "mean_candidate_tokens": sum(len(tokenizer(t, add_special_tokens=False).input_ids)
                                     for t in candidates) / len(candidates),
        "dpo": dpo_result,
        "peak_rss_mib": peak_rss,
        "versions": versions("sentence-transformers", "peft", "numpy"),
    }))


def run_dtype(config: dict) -> str:
    """The generator dtype a fedsyn run's config asks for, as this script names it (auto on
    the CPU is fp32)."""
    return "bf16" if config.get("model", {}).get("generator_dtype") == "bf16" else "f32"


def fedsyn_round(run_dir: Path, peak_rss_kib: int) -> None:
    """The first round's row of a fedsyn run, in this script's JSON shape. Its total is the
    round's wall time less the FID diagnostic (`seconds.eval`), which the Python round does
    not compute."""
    rows = metrics_rows(run_dir)
    if not rows:
        sys.exit(f"{run_dir}/metrics.jsonl has no finished round")
    row = rows[0]
    config = tomllib.loads((run_dir / "config.toml").read_text())
    generation = config["generation"]
    prompts = json.loads((run_dir / "prompts.json").read_text())
    print(json.dumps({
        "tool": "fedsyn",
        "run_dir": str(run_dir),
        "prompts": len(prompts),
        "per_prompt": generation["candidates_per_prompt"],
        "max_new_tokens": generation["max_new_tokens"],
        "clients": row["cohort"],
        "sigma": row["sigma"],
        "threads": config["run"]["threads"],
        "generator_dtype": json.loads((run_dir / "summary.json").read_text()).get(
            "generator_dtype", "f32"),
        "seconds": {phase: row["seconds"][phase] for phase in PHASES},
        "eval_seconds": row["seconds"]["eval"],
        "wall_seconds": row["wall_seconds"],
        "total_seconds": row["wall_seconds"] - row["seconds"]["eval"],
        "dpo": {"mean_loss": row["train_loss"], "reward_accuracy": row["reward_accuracy"]},
        "peak_rss_mib": peak_rss_kib / 1024,
    }))


def markdown(fedsyn_path: str, python_path: str) -> None:
    fedsyn = json.loads(Path(fedsyn_path).read_text())
    python = json.loads(Path(python_path).read_text())
    v = python["versions"]
    print("| phase | Python stack (s) | fedsyn (s) | Python / fedsyn |")
    print("|---|---:|---:|---:|")
    for phase in PHASES:
        ours, theirs = fedsyn["seconds"][phase], python["seconds"][phase]
        print(f"| {phase} | {theirs:.3f} | {ours:.3f} | {ratio(theirs, ours)} |")
    print(f"| **round** | **{python['total_seconds']:.2f}** | **{fedsyn['total_seconds']:.2f}** | "
          f"**{ratio(python['total_seconds'], fedsyn['total_seconds'])}** |")
    print(f"| peak RSS (MiB, whole process) | {python['peak_rss_mib']:.0f} | "
          f"{fedsyn['peak_rss_mib']:.0f} | {python['peak_rss_mib'] / fedsyn['peak_rss_mib']:.2f} |")
    print()
    print(f"J = {python['prompts']} prompts × K = {python['per_prompt']} candidates, at most "
          f"{python['max_new_tokens']} new tokens; {python['clients']} clients "
          f"({python['client_texts']} texts on the Python side); σ = {python['sigma']:.4f}; "
          f"{python['threads']} torch threads on both sides; generator in "
          f"{python.get('generator_dtype', 'f32')} (Python) and "
          f"{fedsyn.get('generator_dtype', 'f32')} (fedsyn). fedsyn's round total is its "
          f"wall_seconds {fedsyn['wall_seconds']:.2f} less the FID diagnostic "
          f"({fedsyn['eval_seconds']:.2f} s). Python model load (generator + LoRA + embedder) "
          f"{python['load_seconds']:.1f} s and client embedding "
          f"{python['client_embed_seconds']:.1f} s, both untimed. Mean candidate length (Python): "
          f"{python['mean_candidate_tokens']:.1f} tokens. DPO mean loss / reward accuracy: "
          f"Python {python['dpo']['mean_loss']:.4f} / {python['dpo']['reward_accuracy']:.2f}, "
          f"fedsyn {fedsyn['dpo']['mean_loss']:.4f} / {fedsyn['dpo']['reward_accuracy']:.2f}. "
          f"{stack_text(python)}, sentence-transformers {v['sentence-transformers']}, peft "
          f"{v['peft']}, numpy {v['numpy']}.")


def ratio(python_seconds: float, fedsyn_seconds: float) -> str:
    return f"{python_seconds / fedsyn_seconds:.2f}×" if fedsyn_seconds > 0 else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path,
                        help="a fedsyn run directory: run the same round in Python")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["auto", "f32", "bf16"], default="auto",
                        help="the generator's dtype (auto: the run's model.generator_dtype)")
    parser.add_argument("--fedsyn-round", type=Path, metavar="RUN_DIR",
                        help="print the first round of this fedsyn run as JSON")
    parser.add_argument("--peak-rss-kib", type=int, default=0,
                        help="with --fedsyn-round: the fedsyn process's peak RSS")
    parser.add_argument("--markdown", nargs=2, metavar=("FEDSYN_JSON", "PYTHON_JSON"),
                        help="print the comparison table")
    args = parser.parse_args()
    if args.markdown:
        markdown(*args.markdown)
    elif args.fedsyn_round:
        fedsyn_round(args.fedsyn_round, args.peak_rss_kib)
    elif args.run_dir:
        run(args)
    else:
        parser.error("give --run-dir RUN (run), --fedsyn-round RUN (convert) or --markdown")


if __name__ == "__main__":
    main()
