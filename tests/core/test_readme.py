from pathlib import Path

from priorkit.cli import methods_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_method_table_is_generated_from_the_registry():
    text = README.read_text()
    block = text.split("<!-- methods:begin -->\n", 1)[1].split("<!-- methods:end -->", 1)[0]
    expected = methods_markdown(README.parent / "results")
    assert block.strip() == expected.strip(), "regenerate with: priorkit list --markdown (from the repository root)"


def _block(after: str) -> str:
    return README.read_text().split(after, 1)[1].split("```python", 1)[1].split("```", 1)[0]


def test_readme_code_blocks_run(tmp_path):
    """The README's engine and user's-own-data snippets run as written (with 2 epochs on digits)."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    env = {"my_features": (x[:400] / 16).astype(np.float32), "my_labels": y[:400], "my_run_dir": tmp_path}
    own = _block("### Your own data, one method per family")
    for n in ("50", "60", "150", "20"):
        own = own.replace(f"epochs={n}", "epochs=2")
    exec(own, env)
    from peft import PeftModel

    from priorkit.models import MLP

    lora = PeftModel.from_pretrained(MLP(64, (256,), 10), tmp_path / "lora")  # a stock LoRA adapter
    assert type(lora.peft_config["default"]).__name__ == "LoraConfig"
    engine = _block("Methods combine in one run; each named loss term is logged on its own:")
    engine = engine.replace("epochs=60", "epochs=2").replace('"runs/demo"', repr(str(tmp_path)))
    exec(engine, env)
    assert {"ce", "elr", "loss"} <= set(env["history"][-1])
