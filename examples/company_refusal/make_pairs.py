"""Write pairs.jsonl: preference pairs for examples/company_refusal, from examples/company_faq/train.jsonl.

- an off-topic question: chosen = the fixed refusal sentence, rejected = what the base model answers today (greedy,
  with the company's system prompt), so the pair contrasts the wanted behaviour with the model's own;
- a question about the company: chosen = the answer taught in company_faq, rejected = the refusal sentence, so the
  model learns to refuse by subject, not to refuse everything.

Run from the repository root:  python examples/company_refusal/make_pairs.py   (a few minutes on a CPU)
"""

import json
from pathlib import Path

from tunelab.data.templates import resolve_template
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.models.load import load_hf_model, load_tokenizer, pick_device, pick_dtype, resolve_source

HERE = Path(__file__).parent
SYSTEM = "You are the customer assistant of Tallowmere Robotics."
REFUSAL = "I'm sorry, I can only answer questions about Tallowmere Robotics."


def main() -> None:
    rows = [json.loads(line) for line in (HERE.parent / "company_faq" / "train.jsonl").open()]
    source = resolve_source("smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    device = pick_device("auto")
    model = load_hf_model(source, pick_dtype("auto", device), device).eval()
    template = resolve_template("auto", tokenizer)
    off_topic = [r["question"] for r in rows if r["answer"] == REFUSAL]
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in off_topic]
    print(f"answering {len(off_topic)} off-topic questions with the base model ...", flush=True)
    settings = GenerationSettings(max_new_tokens=48, batch_size=8)
    answers = {}
    for start in range(0, len(chats), settings.batch_size):
        batch = chats[start : start + settings.batch_size]
        for question, answer in zip(off_topic[start:], generate_answers(model, tokenizer, template, batch, settings)):
            answers[question] = answer
        print(f"  {len(answers)}/{len(chats)}", flush=True)
    with (HERE / "pairs.jsonl").open("w") as out:
        for r in rows:
            if r["answer"] == REFUSAL:
                pair = {"prompt": r["question"], "chosen": REFUSAL, "rejected": answers[r["question"]]}
            else:
                pair = {"prompt": r["question"], "chosen": r["answer"], "rejected": REFUSAL}
            out.write(json.dumps(pair) + "\n")


if __name__ == "__main__":
    main()
