"""transformers' Trainer with WatchdogTrainerCallback; a tiny BERT built from a config.

    pip install 'gpu-job-watchdog[huggingface]'
    python examples/huggingface_example.py --steps 50

No download: the model is built from a config with random weights. A
`checkpoint` command makes the Trainer save `output_dir/checkpoint-<step>`;
rerunning resumes from the newest one.
"""

from __future__ import annotations

import argparse
import os

import torch
import transformers

from watchdog.integrations.huggingface import WatchdogTrainerCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--output-dir", default="checkpoints/huggingface")
    args = parser.parse_args()

    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(0)
    data = [
        {
            "input_ids": torch.randint(0, 100, (16,), generator=generator),
            "attention_mask": torch.ones(16, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(256)
    ]
    training_args = transformers.TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = transformers.Trainer(
        model=model, args=training_args, train_dataset=data, callbacks=[WatchdogTrainerCallback()]
    )
    has_checkpoint = os.path.isdir(args.output_dir) and any(
        name.startswith("checkpoint-") for name in os.listdir(args.output_dir)
    )
    trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    print(f"finished at step {trainer.state.global_step}")


if __name__ == "__main__":
    main()
