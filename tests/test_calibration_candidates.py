"""The calibration candidates (evals/calibration/) against hand-computed references."""
import torch

from trainers.algorithm import Algorithm, Rollouts, load_algorithm


def _batch(correct, valid, length, g=4, max_length=20):
    n = len(correct)
    t = max(length)
    mask = (torch.arange(t)[None] < torch.tensor(length)[:, None]).float()
    return Rollouts(correct=torch.tensor(correct), valid=torch.tensor(valid),
                    length=torch.tensor(length), max_length=max_length,
                    group=torch.arange(n // g).repeat_interleave(g), group_size=g,
                    response_mask=mask, step=0, total_steps=10)


def test_sign_flip_is_minus_grpo():
    b = _batch([True, False, False, True, False, False, False, False],
               [True] * 8, [3, 4, 5, 6, 7, 8, 9, 10])
    grpo, flip = load_algorithm("grpo"), load_algorithm("evals/calibration/sign_flip.py")
    flipped = flip.compute_advantages(b, flip.shape_reward(b))
    torch.testing.assert_close(flipped, -grpo.compute_advantages(b, grpo.shape_reward(b)))


def test_length_gated_penalizes_only_correct_answers():
    b = _batch([True, True, False, False], [True, True, True, False], [4, 20, 4, 20])
    r = load_algorithm("evals/calibration/length_gated.py").shape_reward(b)
    torch.testing.assert_close(r, torch.tensor([1 - 0.5 * 4 / 20, 0.5, 0.0, 0.0]))


def test_validity_mask_uses_valid_samples_for_the_baseline():
    # group: rewards 1, 0, 0 on valid samples, one invalid sample
    b = _batch([True, False, False, False], [True, True, True, False], [5, 5, 5, 5])
    algo = load_algorithm("evals/calibration/validity_mask.py")
    adv = algo.compute_advantages(b, algo.shape_reward(b))
    r = torch.tensor([1.0, 0.0, 0.0])
    ref = (r - r.mean()) / (r.std() + 1e-6)  # unbiased std over the 3 valid samples
    torch.testing.assert_close(adv[:3], ref)
    assert adv[3] == -1.0
    assert isinstance(algo, Algorithm)


def test_solved_brevity_prices_length_only_in_all_correct_groups():
    # group 0: all correct (lengths 4, 8, 12, 16); group 1: mixed, lengths ignored
    b = _batch([True] * 4 + [True, False, True, False], [True] * 8,
               [4, 8, 12, 16, 4, 8, 20, 20])
    b.step, b.total_steps = 5, 11  # t = 5 / 10
    algo = load_algorithm("evals/length_frontier/solved_brevity_nx.py")
    r = algo.shape_reward(b)
    solved = 1 - torch.tensor([4.0, 8, 12, 16]) / 20
    torch.testing.assert_close(r, torch.cat([solved, torch.tensor([1.0, 0, 1, 0])]))
    adv = algo.compute_advantages(b, r)
    for grp, lo in ((r[:4], 0), (r[4:], 4)):  # (r - mean) / max(std + t, 0.05)
        torch.testing.assert_close(adv[lo:lo + 4], (grp - grp.mean()) / (grp.std() + 0.5))
    assert adv[0] > adv[1] > adv[2] > adv[3]  # shorter correct answers win where solved
