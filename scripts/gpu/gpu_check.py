#!/usr/bin/env python3
"""The GPU check: fedsyn's CUDA path beside transformers, PEFT and sentence-transformers.

Runs from the bundle that scripts/gpu-bundle.sh makes (this file is copied into it), on a
machine that has python3 with torch, transformers, peft and sentence-transformers but no cargo
and no network, in one call of at most eight minutes. The real weights cannot be carried, so
the models are random-weight Hugging Face folders of the real shapes, built here with the
machine's transformers and given the real tokenizers:

  smollm2   SmolLM2-135M-Instruct's shape (30 layers, d 576, 9 heads, 3 KV heads)
  llama-1b  Llama-3.2-1B's layer shapes (16 layers, d 2048, 32 heads, 8 KV heads) on
            SmolLM2's 49,152-token vocabulary: 1.07 B parameters
  minilm    all-MiniLM-L6-v2's shape (6 layers, d 384), mean pooling, normalised

Steps (each is recorded in summary.json; a failing step does not stop the others):

  environment  versions; the bundle's libtorch must be the machine's torch; its glibc and
               libstdc++ must be new enough; `fedsyn doctor` must see the device
  models       builds the folders
  logits       `fedsyn generate --greedy --logprobs` for each model and dtype; transformers
               scores the same ids. fedsyn's error against transformers in fp32 must stay within
               3× transformers' own error in that dtype (0 in fp32) plus 5e-3
  sampling     tokens/s of `fedsyn generate` and of transformers `generate`: the same prompt
               ids, batch, new tokens (end-of-sequence ignored), temperature 1, both warmed up
  dpo          one LoRA-DPO optimiser step (8 pairs, r 16, all seven projections): fedsyn dpo
               against PyTorch + PEFT taking TRL's step (dpo_step_anchor.py); warm steps only
  embedding    texts/s of `fedsyn embed` and of sentence-transformers `encode`, in fp32 and
               bf16, and the cosine between their embeddings
  round        one POPri round of experiments/paper-scale.toml with the 1B shape and
               J·K = 2,560, seconds per phase

Usage (in the bundle):
    python3 gpu_check.py [--out DIR]              # CUDA, the real shapes
    python3 gpu_check.py --device cpu --tiny      # the dry run: tiny shapes on the CPU

Exit status: 0 when every step passed, 1 when one failed, 3 when the machine lacks something
the check needs (summary.json says what).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = ("Fellow-Citizens of the Senate and House of Representatives: In meeting you again I "
          "feel much satisfaction in being able to")

# Random weights drawn with this standard deviation (transformers' default is 0.02): logits
# then spread over several nats, so that an error in attention or RoPE moves log-probabilities
# visibly instead of hiding in a near-uniform distribution.
INIT_STD = 0.05


def encoder_shape(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """BertConfig's size arguments."""
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads)


def decoder_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                  rope_theta: float) -> dict:
    """LlamaConfig's size arguments: a BERT's, and the KV heads and RoPE base."""
    return dict(encoder_shape(hidden, intermediate, layers, heads),
                num_key_value_heads=kv_heads, rope_theta=rope_theta)


# The models' shapes, real on the GPU and tiny in the dry run: hidden size, MLP size, layers,
# attention heads (and for the decoders KV heads, RoPE base).
SHAPES = {
    "full": {"smollm2": decoder_shape(576, 1536, 30, 9, 3, 100000.0),
             "llama-1b": decoder_shape(2048, 8192, 16, 32, 8, 500000.0),
             "minilm": encoder_shape(384, 1536, 6, 12)},
    "tiny": {"smollm2": decoder_shape(64, 128, 2, 4, 2, 100000.0),
             "llama-1b": decoder_shape(96, 192, 3, 6, 2, 500000.0),
             "minilm": encoder_shape(64, 128, 2, 4)},
}

# Sizes of the workloads: real on the GPU, small enough for CI in the dry run.
WORK = {
    "full": dict(batches=[64, 256], new_tokens=128, logprob_tokens=32, embed_texts=4096,
                 embed_batch=256, dpo_steps=3, prompts=256, candidates=10, round_tokens=64,
                 logit_cases=[("smollm2", "f32"), ("smollm2", "bf16"), ("llama-1b", "f32"),
                              ("llama-1b", "bf16")],
                 sampling_models=["smollm2", "llama-1b"], dpo_model="llama-1b"),
    "tiny": dict(batches=[4, 8], new_tokens=12, logprob_tokens=12, embed_texts=48,
                 embed_batch=16, dpo_steps=2, prompts=6, candidates=5, round_tokens=12,
                 logit_cases=[("smollm2", "f32"), ("smollm2", "bf16"), ("llama-1b", "f32")],
                 sampling_models=["smollm2"], dpo_model="smollm2"),
}


class Missing(Exception):
    """The machine lacks something the check needs: the check stops (exit 3)."""


class Check:
    def __init__(self, args):
        self.args = args
        self.size = "tiny" if args.tiny else "full"
        self.work = WORK[self.size]
        self.out = Path(args.out).resolve()
        self.models = self.out / "models"
        self.scratch = self.out / "scratch"
        self.bundle = Path(args.bundle).resolve()
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        self.summary = {"device": args.device, "shapes": self.size, "steps": {}}
        self.started = time.perf_counter()
        self.env = dict(os.environ)

    # -- plumbing --------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {message}", flush=True)

    def fedsyn(self, *args: str, name: str) -> dict:
        """Runs `fedsyn ARGS --json`; returns its JSON report, keeps its output in NAME.log."""
        command = [str(self.bundle / "bin" / "fedsyn"), "--json", *args]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=self.env)
        (self.out / f"{name}.log").write_text(
            f"$ {' '.join(command)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-5:]
            raise RuntimeError(f"fedsyn {args[0]} exited {result.returncode}: {' | '.join(tail)}")
        report = json.loads(result.stdout) if result.stdout.strip() else {}
        report["process_seconds"] = time.perf_counter() - started
        return report

    def step(self, name: str, function) -> None:
        remaining = self.args.time_limit - (time.perf_counter() - self.started)
        if remaining < 20:
            self.summary["steps"][name] = {"status": "skipped",
                                           "reason": "the time limit was reached"}
            return
        self.log(f"{name} …")
        started = time.perf_counter()
        record = {"status": "ok"}
        try:
            record.update(function() or {})
            if record.pop("failed", False):
                record["status"] = "failed"
        except Missing:
            raise
        except Exception as error:  # recorded, and the next step runs
            record = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()}
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.summary["steps"][name] = record
        self.log(f"{name}: {record['status']} ({record['seconds']} s)"
                 + (f": {record['error']}" if "error" in record else ""))
        self.write_summary()

    def write_summary(self) -> None:
        self.summary["seconds"] = round(time.perf_counter() - self.started, 2)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")

    def synchronize(self) -> None:
        import torch

        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def dtype(self, name: str):
        import torch

        return {"f32": torch.float32, "bf16": torch.bfloat16}[name]

    def default_dtype(self) -> str:
        return "bf16" if self.args.device.startswith("cuda") else "f32"

    # -- steps -----------------------------------------------------------------------------

    def environment(self) -> dict:
        facts = {"python": platform.python_version(), "machine": platform.machine()}
        try:
            import peft
            import sentence_transformers
            import torch
            import transformers
        except ImportError as error:
            raise Missing(f"a Python package is missing: {error.name} (the check needs torch, "
                          "transformers, peft and sentence-transformers)") from error
        facts.update(torch=torch.__version__, transformers=transformers.__version__,
                     peft=peft.__version__, sentence_transformers=sentence_transformers.__version__,
                     bundle=self.manifest)
        built = self.manifest["torch_version"].split("+")[0]
        if torch.__version__.split("+")[0] != built:
            raise Missing(f"this machine's torch is {torch.__version__}; the bundle's binaries "
                          f"were built against libtorch {self.manifest['torch_version']}: "
                          "rebuild the bundle against this torch (scripts/setup.sh pins it)")
        glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
        facts["glibc"] = glibc
        if version_tuple(glibc) < version_tuple(self.manifest["glibc_required"]):
            raise Missing(f"glibc {glibc} is older than the {self.manifest['glibc_required']} "
                          "the binaries need: build the bundle on an older system")
        libstdcxx = newest_glibcxx()
        facts["glibcxx"] = libstdcxx
        if libstdcxx and version_tuple(libstdcxx) < version_tuple(self.manifest["glibcxx_required"]):
            raise Missing(f"libstdc++ provides GLIBCXX_{libstdcxx}, older than the "
                          f"{self.manifest['glibcxx_required']} the binaries need")
        torch_lib = Path(torch.__file__).parent / "lib"
        self.env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in [str(torch_lib), self.env.get("LD_LIBRARY_PATH", "")] if p)
        self.env["FEDSYN_SOTU_DIR"] = str(self.bundle / "data" / "sotu")
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if self.args.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise Missing("torch sees no CUDA device: run on a GPU machine, or pass "
                              "--device cpu --tiny for the dry run")
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["gpu_memory_gib"] = round(
                torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            doctor = self.fedsyn("doctor", name="doctor")
        except RuntimeError as error:
            raise Missing(f"fedsyn does not start here: {error}") from error
        facts["doctor"] = doctor
        if doctor["libtorch_version"].split("+")[0] != built:
            raise Missing(f"fedsyn loaded libtorch {doctor['libtorch_version']}, not {built}")
        if self.args.device.startswith("cuda") and not (
                doctor["libtorch_cuda_loaded"] and doctor["cuda_devices"] > 0):
            raise Missing("fedsyn sees no CUDA device (libtorch_cuda loaded: "
                          f"{doctor['libtorch_cuda_loaded']}); see doctor.log")
        return facts

    def build_models(self) -> dict:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        shapes = SHAPES[self.size]
        self.models.mkdir(parents=True, exist_ok=True)
        smollm2_tokenizer = self.bundle / "tokenizers" / "smollm2"
        built = {}
        for name in ("smollm2", "llama-1b"):
            config = LlamaConfig(vocab_size=49152, max_position_embeddings=8192,
                                 rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                                 eos_token_id=2, pad_token_id=2, initializer_range=INIT_STD,
                                 hidden_act="silu", **shapes[name])
            torch.manual_seed(0)
            with torch.device(self.args.device):
                model = LlamaForCausalLM(config).to(torch.bfloat16)
            folder = self.models / name
            model.save_pretrained(folder)
            for file in smollm2_tokenizer.iterdir():
                shutil.copy(file, folder / file.name)
            built[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                           "dir": str(folder)}
            del model
        built["minilm"] = self.build_minilm(shapes["minilm"])
        return {"models": built}

    def build_minilm(self, shape) -> dict:
        import torch
        from sentence_transformers import SentenceTransformer, models
        from transformers import BertConfig, BertModel

        raw = self.scratch / "minilm-raw"
        config = BertConfig(vocab_size=30522, max_position_embeddings=512,
                            initializer_range=INIT_STD, **shape)
        torch.manual_seed(0)
        BertModel(config).save_pretrained(raw)
        for file in (self.bundle / "tokenizers" / "minilm").iterdir():
            shutil.copy(file, raw / file.name)
        transformer = models.Transformer(str(raw), max_seq_length=256)
        pooling = models.Pooling(shape["hidden_size"], pooling_mode="mean")
        folder = self.models / "minilm"
        SentenceTransformer(modules=[transformer, pooling, models.Normalize()],
                            device="cpu").save(str(folder))
        return {"dir": str(folder), "hidden_size": shape["hidden_size"]}

    def logits(self) -> dict:
        import torch
        from transformers import AutoModelForCausalLM

        cases, failed = [], False
        for name, dtype in self.work["logit_cases"]:
            folder = self.models / name
            report = self.fedsyn("generate", "--model", str(folder), "--device", self.args.device,
                                 "--dtype", dtype, "--greedy", "--logprobs", "--max-tokens",
                                 str(self.work["logprob_tokens"]), "--prompt", PROMPT,
                                 name=f"logits-{name}-{dtype}")
            sample = report["samples"][0]
            prompt, tokens = report["prompt_token_ids"], sample["token_ids"]
            ids = torch.tensor([prompt + tokens], device=self.args.device)

            def scores(kind):
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=kind).to(
                    self.args.device)
                with torch.no_grad():
                    logits = model(ids).logits[0].float()
                del model
                rows = logits[len(prompt) - 1: len(prompt) - 1 + len(tokens)]
                return rows.log_softmax(-1), rows

            reference, reference_logits = scores(torch.float32)
            index = torch.tensor(tokens, device=self.args.device).unsqueeze(-1)
            want = reference.gather(1, index).squeeze(-1).cpu()
            if dtype == "f32":
                own_error = 0.0
            else:
                same_dtype, _ = scores(self.dtype(dtype))
                own_error = float((same_dtype.gather(1, index).squeeze(-1).cpu() - want).abs().max())
            got = torch.tensor(sample["logprobs"])
            error = float((got - want).abs().max())
            tolerance = 3 * own_error + 5e-3
            argmax = reference_logits.argmax(-1).cpu()
            agreement = float((argmax == torch.tensor(tokens)).float().mean())
            ok = error <= tolerance
            failed |= not ok
            cases.append({"model": name, "dtype": dtype, "tokens": len(tokens),
                          "max_abs_logprob_error": error,
                          "transformers_own_error": own_error, "tolerance": tolerance,
                          "greedy_agrees_with_fp32_argmax": agreement,
                          "logit_std": float(reference_logits.std(-1).mean()), "ok": ok})
            self.log(f"  {name} {dtype}: max |Δ log p| {error:.2e} (transformers' own "
                     f"{own_error:.2e}; tolerance {tolerance:.2e}) {'ok' if ok else 'FAILED'}")
        return {"cases": cases, "failed": failed}

    def sampling(self) -> dict:
        import torch
        from transformers import AutoModelForCausalLM

        rows = []
        new_tokens = self.work["new_tokens"]
        dtype = self.default_dtype()
        for name in self.work["sampling_models"]:
            folder = self.models / name
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype(dtype)).to(
                self.args.device)
            for batch in self.work["batches"]:
                report = self.fedsyn("generate", "--model", str(folder), "--device",
                                     self.args.device, "--dtype", dtype, "-n", str(batch),
                                     "--max-tokens", str(new_tokens), "--ignore-eos",
                                     "--temperature", "1", "--seed", "1", "--warmup", "1",
                                     "--logprobs", "--prompt", PROMPT,
                                     name=f"sampling-{name}-{batch}")
                prompt = report["prompt_token_ids"]
                ids = torch.tensor([prompt] * batch, device=self.args.device)
                settings = dict(attention_mask=torch.ones_like(ids), do_sample=True,
                                temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, pad_token_id=2)
                with torch.no_grad():
                    model.generate(ids, **settings)  # warm-up, as fedsyn's --warmup 1
                    self.synchronize()
                    started = time.perf_counter()
                    output = model.generate(ids, **settings)
                    self.synchronize()
                    seconds = time.perf_counter() - started
                python_tps = (output.shape[1] - ids.shape[1]) * batch / seconds
                fedsyn_tps = report["generated_tokens"] / report["generate_seconds"]
                rows.append({"model": name, "dtype": dtype, "batch": batch,
                             "prompt_tokens": len(prompt), "new_tokens": new_tokens,
                             "fedsyn_tokens_per_second": fedsyn_tps,
                             "transformers_tokens_per_second": python_tps,
                             "speedup": fedsyn_tps / python_tps,
                             "attention": model.config._attn_implementation})
                self.log(f"  {name} batch {batch}: fedsyn {fedsyn_tps:.0f} tok/s, transformers "
                         f"{python_tps:.0f} tok/s ({fedsyn_tps / python_tps:.2f}×)")
            del model
        return {"rows": rows}

    def dpo(self) -> dict:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sys.path.insert(0, str(HERE))
        import dpo_step_anchor as anchor

        name = self.work["dpo_model"]
        folder = self.models / name
        tokenizer = AutoTokenizer.from_pretrained(folder)
        words = " ".join(passages(self.bundle / "data" / "sotu", 64)).split()
        pairs_text, pairs_ids = [], []
        for i in range(8):
            chunk = words[i * 160:(i + 1) * 160]
            prompt, chosen, rejected = (" ".join(chunk[:100]), " " + " ".join(chunk[100:130]),
                                        " " + " ".join(chunk[130:160]))
            pairs_text.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
            encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
            pairs_ids.append({"prompt": encode(prompt), "chosen": encode(chosen) + [2],
                              "rejected": encode(rejected) + [2]})
        pairs_file = self.scratch / "pairs.jsonl"
        pairs_file.write_text("".join(json.dumps(p) + "\n" for p in pairs_text))

        def fedsyn_run(steps, call):
            return self.fedsyn("dpo", "--pairs", str(pairs_file), "--model", str(folder),
                               "--out", str(self.scratch / f"dpo-{steps}-{call}"), "--device",
                               self.args.device, "--batch-size", "8", "--grad-accum", "1",
                               "--epochs", "100", "--max-steps", str(steps), "--lora-r", "16",
                               "--lora-alpha", "16", name=f"dpo-{steps}-steps-{call}")

        # The fastest of two calls of each length: one slow call on a busy machine would
        # otherwise swing the difference (even below zero on a loaded CPU).
        one = fedsyn_run(1, 0)
        one_seconds = min(one["train_seconds"], fedsyn_run(1, 1)["train_seconds"])
        more_seconds = min(fedsyn_run(1 + self.work["dpo_steps"], call)["train_seconds"]
                           for call in range(2))
        fedsyn_step = (more_seconds - one_seconds) / self.work["dpo_steps"]

        dtype = self.dtype(self.default_dtype())
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.args.device)
        lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=8e-7, weight_decay=0.0)
        tensors = tuple(t.to(self.args.device) for t in anchor.batch(pairs_ids))

        def python_run(steps):
            # As `fedsyn dpo` trains: the reference once per call, then the steps.
            self.synchronize()
            started = time.perf_counter()
            reference = anchor.reference_log_probs(model, tensors)
            for _ in range(steps):
                anchor.step(model, optimizer, params, tensors, len(pairs_ids), reference)
            self.synchronize()
            return time.perf_counter() - started

        # Both sides: the difference of a (1 + n)-step and a 1-step call, so that neither the
        # first, cold step nor the reference pass counts.
        one_python = min(python_run(1) for _ in range(2))
        more_python = min(python_run(1 + self.work["dpo_steps"]) for _ in range(2))
        python_step = (more_python - one_python) / self.work["dpo_steps"]
        # A difference at or below zero means the machine's noise exceeded the steps' time:
        # no ratio then (reported as null), rather than a division by zero or a negative one.
        speedup = python_step / fedsyn_step if fedsyn_step > 0 and python_step > 0 else None
        self.log(f"  {name}: fedsyn {fedsyn_step:.3f} s/step, PyTorch + PEFT "
                 f"{python_step:.3f} s/step ("
                 + (f"{speedup:.2f}×" if speedup else "too noisy for a ratio") + ")")
        return {"model": name, "dtype": self.default_dtype(), "pairs": len(pairs_ids),
                "tokens_per_row": max(len(p["prompt"]) + len(p["chosen"]) for p in pairs_ids),
                "fedsyn_seconds_per_step": fedsyn_step, "peft_seconds_per_step": python_step,
                "speedup": speedup,
                "fedsyn_loss_first_step": one["steps"][0]["loss"]}

    def embedding(self) -> dict:
        import torch
        from sentence_transformers import SentenceTransformer

        texts = passages(self.bundle / "data" / "sotu", self.work["embed_texts"])
        texts_file = self.scratch / "texts.jsonl"
        texts_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        folder = self.models / "minilm"
        batch = self.work["embed_batch"]
        rows = []
        for dtype in ("f32", "bf16"):
            out = self.scratch / f"embeddings-{dtype}.jsonl"
            report = self.fedsyn("embed", str(texts_file), "--model-dir", str(folder),
                                 "--device", self.args.device, "--dtype", dtype,
                                 "--batch-size", str(batch), "--warmup", "1", "--out", str(out),
                                 name=f"embed-{dtype}")
            fedsyn_vectors = torch.tensor(
                [json.loads(line)["embedding"] for line in out.read_text().splitlines()])
            model = SentenceTransformer(str(folder), device=self.args.device,
                                        model_kwargs={"dtype": self.dtype(dtype)})
            model.encode(texts[:batch], batch_size=batch)  # warm-up, as fedsyn's --warmup 1
            self.synchronize()
            started = time.perf_counter()
            vectors = model.encode(texts, batch_size=batch, convert_to_tensor=True)
            self.synchronize()
            seconds = time.perf_counter() - started
            cosine = torch.nn.functional.cosine_similarity(
                fedsyn_vectors, vectors.float().cpu(), dim=-1)
            rows.append({"dtype": dtype, "texts": len(texts), "batch": batch,
                         "fedsyn_texts_per_second": report["texts_per_second"],
                         "sentence_transformers_texts_per_second": len(texts) / seconds,
                         "speedup": report["texts_per_second"] / (len(texts) / seconds),
                         "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())})
            self.log(f"  {dtype}: fedsyn {report['texts_per_second']:.0f} texts/s, "
                     f"sentence-transformers {len(texts) / seconds:.0f} texts/s, "
                     f"min cosine {float(cosine.min()):.5f}")
            del model
        minimum = {"f32": 0.9999, "bf16": 0.99}
        failed = any(row["min_cosine"] < minimum[row["dtype"]] for row in rows)
        return {"rows": rows, "min_cosine_required": minimum, "failed": failed}

    def popri_round(self) -> dict:
        work = self.work
        run_dir = self.scratch / "round"
        settings = {
            "run.device": self.args.device,
            "run.threads": str(os.cpu_count() or 1),
            "model.generator": str(self.models / "llama-1b"),
            "model.embedder": str(self.models / "minilm"),
            "prompts.num_prompts": str(work["prompts"]),
            "generation.candidates_per_prompt": str(work["candidates"]),
            "generation.max_new_tokens": str(work["round_tokens"] + 8),
            "generation.truncate_tokens": str(work["round_tokens"]),
            "privacy.rounds": "1",
            "output.synthetic_samples": str(work["prompts"]),
        }
        overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        self.fedsyn("simulate", "--quiet", "--config",
                    str(self.bundle / "configs" / "paper-scale.toml"), *overrides, "--out",
                    str(run_dir), name="round")
        metrics = [json.loads(line) for line in
                   (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        shutil.copy(run_dir / "metrics.jsonl", self.out / "round-metrics.jsonl")
        last = metrics[-1]
        return {"candidates": work["prompts"] * work["candidates"],
                "wall_seconds": last.get("wall_seconds"), "phase_seconds": last.get("seconds")}

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        try:
            self.step("environment", self.environment)
            if self.summary["steps"]["environment"]["status"] != "ok":
                raise Missing(self.summary["steps"]["environment"].get("error", "environment"))
            self.step("models", self.build_models)
            if self.summary["steps"]["models"]["status"] != "ok":
                raise Missing("the model folders could not be built; see summary.json")
            for name, function in [("logits", self.logits), ("sampling", self.sampling),
                                   ("dpo", self.dpo), ("embedding", self.embedding),
                                   ("round", self.popri_round)]:
                if name in self.args.steps:
                    self.step(name, function)
        except Missing as missing:
            self.summary["missing"] = str(missing)
            self.write_summary()
            print(f"gpu-check: stopped: {missing}", file=sys.stderr)
            return 3
        finally:
            if not self.args.keep:
                shutil.rmtree(self.models, ignore_errors=True)
                shutil.rmtree(self.scratch, ignore_errors=True)
        statuses = {name: step["status"] for name, step in self.summary["steps"].items()}
        self.summary["passed"] = all(s == "ok" for s in statuses.values())
        self.write_summary()
        print(json.dumps(statuses))
        return 0 if self.summary["passed"] else 1


def version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def newest_glibcxx() -> str | None:
    """The newest GLIBCXX_ version of the libstdc++ the dynamic loader finds, or None."""
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        return None
    paths = re.findall(r"libstdc\+\+\.so\.6 \(libc6,x86-64\) => (\S+)", listing)
    if not paths:
        return None
    found = re.findall(rb"GLIBCXX_(\d+(?:\.\d+)+)", Path(paths[0]).read_bytes())
    return max((v.decode() for v in found), key=version_tuple, default=None)


def passages(folder: Path, count: int) -> list:
    """`count` passages of about 60–120 words from the addresses, in file order, cycling."""
    texts = []
    for path in sorted(folder.glob("*.txt")):
        words = path.read_text().split()
        texts.extend(" ".join(words[i:i + 60 + (i % 61)]) for i in range(0, len(words), 120))
    if not texts:
        raise Missing(f"no addresses in {folder}")
    return [texts[i % len(texts)] for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and workloads (the CPU dry run)")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"),
                        help="where summary.json and the logs go (default: $OUT)")
    parser.add_argument("--bundle", default=str(HERE), help="the bundle (default: this folder)")
    parser.add_argument("--steps", default="logits,sampling,dpo,embedding,round",
                        type=lambda text: text.split(","),
                        help="which steps after environment and models (comma-separated)")
    parser.add_argument("--time-limit", type=float, default=470.0,
                        help="seconds; later steps are skipped once it is near")
    parser.add_argument("--keep", action="store_true", help="keep the model folders")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
