"""verl 0.9.1's actor micro-batch, built on CPU the way its v1 engine workers hand it to
``verl.workers.utils.losses.ppo_loss``: the trainer's whole DataProto batch as a
TensorDict (``batch.to_tensordict()``: padded ``prompts`` / ``responses`` /
``attention_mask``, per-token ``response_mask`` / ``old_log_probs`` / ``advantages`` /
``rm_scores`` / ``ref_log_prob``, the ``uid`` of each row's prompt as non-tensor data, the
global-batch sizes as non-tensor data), and the model's log-probs unpadded, one value per
token of prompt + response (``no_padding_2_padding`` left-shifts them by one).

Shared by the CPU stand-in for ``main_ppo`` (tests/standins/verl_main_ppo.py) and the
adapter-vs-local equivalence test (tests/test_verl_adapter.py).
"""
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

PROMPT_LEN = 3


def micro_batch(*, response_mask, old_log_probs, advantages, rm_scores, uid,
                ref_log_prob=None, global_batch_size=None, dp_size=1,
                batch_num_tokens=None) -> TensorDict:
    bs, width = response_mask.shape
    fields = {
        "prompts": torch.ones(bs, PROMPT_LEN, dtype=torch.long),
        "responses": torch.ones(bs, width, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(bs, PROMPT_LEN), response_mask.float()],
                                    1).long(),
        "response_mask": response_mask.float(),
        "old_log_probs": old_log_probs,
        "advantages": advantages,
        "rm_scores": rm_scores,
    }
    if ref_log_prob is not None:
        fields["ref_log_prob"] = ref_log_prob
    data = TensorDict(fields, batch_size=[bs])
    tu.assign_non_tensor(data, uid=list(uid))
    tu.assign_non_tensor_data(data, "dp_size", dp_size)
    tu.assign_non_tensor_data(data, "batch_num_tokens", batch_num_tokens)
    tu.assign_non_tensor_data(data, "global_batch_size", global_batch_size)
    return data


def unpadded(log_prob: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(bs, T) response log-probs -> the model's (total tokens,) output, whose slice
    ``[end - resp_len - 1 : end - 1]`` of each sequence is its response: differentiable,
    so gradients reach ``log_prob`` through verl's own unpadding."""
    pieces = []
    for row in range(log_prob.shape[0]):
        n = int(response_mask[row].sum())
        pieces.append(torch.zeros(PROMPT_LEN - 1, dtype=log_prob.dtype))
        pieces.append(log_prob[row, :n])
        pieces.append(torch.zeros(1, dtype=log_prob.dtype))
    return torch.cat(pieces)


def rows(data: TensorDict, index) -> TensorDict:
    """The micro-batch of rows ``index`` (verl splits a mini-batch this way)."""
    index = torch.as_tensor(index)
    out = data[index]
    for key in ("dp_size", "batch_num_tokens", "global_batch_size"):
        tu.assign_non_tensor_data(out, key, tu.get_non_tensor_data(data, key, None))
    return out
