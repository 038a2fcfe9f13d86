"""Save the embedded model's tokenizer (SmolLM2, chatml chat template) into a small folder for the GPU tests.

The GPU machine has no network and no `gguf` package, so it cannot open the embedded model; the CUDA tests in
tests/gpu build random-init models from configs and need only a real tokenizer. Run here, then carry the folder:

    python scripts/save_gpu_tokenizer.py .gpu/smollm2-tokenizer      # ~3.5 MB: tokenizer.json, tokenizer_config.json,
                                                                     # chat_template.jinja
    scripts/gpu_train_check.sh .gpu/smollm2-tokenizer                # on the GPU machine
"""

import sys
from pathlib import Path

from tunelab.models.load import load_tokenizer, resolve_source


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu/smollm2-tokenizer")
    tokenizer = load_tokenizer(resolve_source("smollm2-135m-instruct"))
    tokenizer.save_pretrained(out)
    for path in sorted(out.iterdir()):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
