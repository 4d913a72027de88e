from pathlib import Path

from priorkit.cli import methods_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_method_table_is_generated_from_the_registry():
    text = README.read_text()
    block = text.split("<!-- methods:begin -->\n", 1)[1].split("<!-- methods:end -->", 1)[0]
    assert block.strip() == methods_markdown().strip(), "regenerate with: priorkit list --markdown"
