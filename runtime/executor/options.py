"""Command-line options of `plan run` and of the torchrun entry point (no torch import, so
the `plan` command stays quick to start)."""

from __future__ import annotations

REWARD_HELP = ("'model' (the workflow's reward model, a value head: its output at the last "
               "token), or 'programmatic:target_token=N' (reward = fraction of generated "
               "tokens equal to N; no reward model is created; for demos and tests)")


def add_run_options(parser) -> None:
    """The options `plan run` and the torchrun entry point share."""
    parser.add_argument("plan", metavar="PLAN.yaml", help="plan file (plan search / baseline)")
    parser.add_argument("--iterations", type=int, default=2, metavar="N",
                        help="RLHF iterations to run (default 2)")
    parser.add_argument("--trace", metavar="FILE",
                        help="where to write the JSON trace (default: PLAN.trace.json next "
                             "to the plan)")
    parser.add_argument("--prompts", metavar="FILE",
                        help="JSONL of token ids: {\"prompt\": [...]} per line, plus "
                             "\"chosen\"/\"rejected\" for dpo (default: synthetic prompts "
                             "drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of model init, synthetic prompts and sampling (default 0)")
    parser.add_argument("--reward", default="model", metavar="R",
                        help=f"where rewards come from: {REWARD_HELP}; default model")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate of every "
                        "trained model (default 1e-5)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of non-greedy generation (default 1.0)")
    parser.add_argument("--load", action="append", metavar="ROLE=DIR",
                        help="start model role ROLE (e.g. actor) from the HF checkpoint in DIR "
                             "(config.json + safetensors; its config must be the role's model; "
                             "a reward or critic role reads a *ForSequenceClassification "
                             "score head); repeatable; roles not given start from --seed")
    parser.add_argument("--save", metavar="DIR",
                        help="after the last iteration write each trained model role to "
                             "DIR/ROLE/ as an HF checkpoint (config.json + safetensors) that "
                             "transformers loads")
    parser.add_argument("--save-every", type=int, metavar="N",
                        help="with --save: also save after every N iterations")
