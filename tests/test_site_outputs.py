"""检查提交的 notebook 输出与运行文件夹：执行过、不泄露本机路径和用户名、数字来自运行文件夹。"""

import getpass
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [ROOT / "book" / "tutorials" / "lora.ipynb", ROOT / "book" / "tutorials" / "full_finetuning.ipynb",
             ROOT / "book" / "comparison.ipynb"]
RUNS = {"lora": ROOT / "runs" / "lora-quick", "full": ROOT / "runs" / "full-quick"}
PRIVATE_MARKERS = ["/root/", "/home/", "/Users/", "/work/", "C:\\Users", str(ROOT)]


def output_texts(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    texts.append("".join(value))
            texts.extend(output.get("traceback", []))
    return texts


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executed_without_errors(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells, f"{path.name} 没有代码单元"
    assert any(cell.get("outputs") for cell in code_cells), f"{path.name} 没有输出：请运行 scripts/build_notebooks.py"
    errors = [o for cell in code_cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_hide_local_paths(path):
    user = getpass.getuser()
    markers = PRIVATE_MARKERS + ([f"/{user}/"] if len(user) >= 3 else [])
    for text in output_texts(path):
        for marker in markers:
            assert marker not in text, f"{path.name} 的输出里有本机路径或用户名 {marker!r}：{text[:200]}"


@pytest.mark.parametrize("method", RUNS)
def test_run_folder_has_results(method):
    results = json.loads((RUNS[method] / "results.json").read_text(encoding="utf-8"))
    for key in ("test_accuracy", "test_macro_f1", "train_seconds", "images_per_second", "peak_memory_mb",
                "trainable_params", "total_params"):
        assert key in results
    assert results["method"] == method
    assert (RUNS[method] / "metrics.jsonl").is_file()
    assert (RUNS[method] / "evaluation" / "test" / "confusion_matrix.png").is_file()


def test_lora_run_meets_quick_targets():
    results = json.loads((RUNS["lora"] / "results.json").read_text(encoding="utf-8"))
    assert results["test_accuracy"] >= 0.90
    assert results["trainable_ratio"] < 0.05
    assert results["split"] == "official"
    assert results["num_classes"] == 10


def test_comparison_page_shows_run_numbers():
    texts = "\n".join(output_texts(ROOT / "book" / "comparison.ipynb"))
    for run_dir in RUNS.values():
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        assert f"{results['test_accuracy']:.4f}" in texts
        assert f"{results['peak_memory_mb']:.0f}" in texts
