import torch
from torch import nn

from components.train import Ema


def test_ema_matches_hand_computation():
    model = nn.BatchNorm1d(2)  # float params + float buffers + an int buffer
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0]))
    ema = Ema(model, decay=0.5)
    for target in ([3.0, 2.0], [7.0, 10.0]):
        with torch.no_grad():
            model.weight.copy_(torch.tensor(target))
            model.running_mean.add_(4.0)
            model.num_batches_tracked += 3
        ema.update(model)
    # weight: 0.5*1 + 0.5*3 = 2, then 0.5*2 + 0.5*7 = 4.5; [2, 2], then [6, 6]
    assert torch.equal(ema.model.weight, torch.tensor([4.5, 6.0]))
    # running_mean: 0 -> 0.5*0 + 0.5*4 = 2 -> 0.5*2 + 0.5*8 = 5
    assert torch.equal(ema.model.running_mean, torch.tensor([5.0, 5.0]))
    assert ema.model.num_batches_tracked.item() == 6  # integer buffers are copied
    assert not ema.model.training and not ema.model.weight.requires_grad


def test_ema_does_not_share_storage_and_round_trips():
    model = nn.Linear(3, 1)
    ema = Ema(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(ema.model.weight, model.weight)
    other = Ema(nn.Linear(3, 1), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.model.weight, ema.model.weight)
