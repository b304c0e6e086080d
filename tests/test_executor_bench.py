"""graph.executor_bench's archive comparison on real SQLite archives: which of two
siblings keeps a shared name depends on which finished first (as ids do), so it is not a
difference; a different name, status or code is."""
from memory.archive import Archive

from graph.executor_bench import differences, snapshot


def _archive(home, order: list[int], names: dict[int, str], codes: dict[int, str]) -> None:
    """Round 0's seed, then round 1's slots archived in ``order`` under the loop's
    rename-on-conflict rule (graph.graph.archive)."""
    with Archive(home) as a:
        run = a.start_run("accurate")
        seed = a.add_candidate(run, "grpo", 0, "name: grpo", "NAME = 'grpo'\n",
                               details={"key": f"{run}:0:0", "round": 0, "slot": 0})
        for slot in order:
            a.add_candidate(run, a.unique_name(names[slot]), 1, f"name: {names[slot]}",
                            codes[slot], parents=[seed],
                            details={"key": f"{run}:1:{slot}", "round": 1, "slot": slot},
                            rename_on_conflict=True)


def test_siblings_sharing_a_name_in_either_arrival_order_are_the_same_archive(tmp_path):
    names = {0: "zf-grpo", 1: "zf-grpo"}
    codes = {0: "NAME = 'a'\n", 1: "NAME = 'b'\n"}
    _archive(tmp_path / "first", [0, 1], names, codes)
    _archive(tmp_path / "second", [1, 0], names, codes)
    a, _ = snapshot(tmp_path / "first")
    b, _ = snapshot(tmp_path / "second")
    with Archive(tmp_path / "second") as arch:  # the race did happen: slot 1 kept the name
        by_slot = {c.info.slot: c.name for c in arch.candidates(1) if c.generation == 1}
    assert by_slot == {0: "zf-grpo-2", 1: "zf-grpo"}
    assert a["names_by_round"]["1"] == ["zf-grpo", "zf-grpo-2"]
    assert differences(a, b) == []


def test_a_different_name_or_code_is_still_a_difference(tmp_path):
    codes = {0: "NAME = 'a'\n", 1: "NAME = 'b'\n"}
    _archive(tmp_path / "ref", [0, 1], {0: "zf-grpo", 1: "zf-grpo"}, codes)
    _archive(tmp_path / "renamed", [0, 1], {0: "zf-grpo", 1: "cl-grpo"}, codes)
    _archive(tmp_path / "recoded", [1, 0], {0: "zf-grpo", 1: "zf-grpo"},
             {0: "NAME = 'a'\n", 1: "NAME = 'c'\n"})
    ref, _ = snapshot(tmp_path / "ref")
    renamed = differences(ref, snapshot(tmp_path / "renamed")[0])
    assert "/slots/1:1/proposed_name: zf-grpo != cl-grpo" in renamed
    assert any(d.startswith("/names_by_round/1") for d in renamed)
    recoded = differences(ref, snapshot(tmp_path / "recoded")[0])
    assert [d.split(":")[0] + ":" + d.split(":")[1] for d in recoded] == ["/slots/1:1/code_hash"]
