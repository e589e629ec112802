"""One rank of the 2-process SyncBatchNorm test (tests/test_torch_sync.py launches it).

Usage: python _torch_sync_worker.py RANK WORLD_SIZE INIT_METHOD CASE_FILE OUT_FILE

CASE_FILE (torch.save'd list of cases, run one after the other) holds for each case the
whole batch ``x``, the upstream weights ``g`` of each step (the loss of step t is
``sum(model(x) * g[t])``), the model's ``state_dict``, the rows of each rank (``sizes``),
``memory_format``, ``lr``, ``ddp`` and ``compile``. The rank trains the model converted by
``bnfast.torch.convert_sync_batchnorm`` on its rows, either wrapped in
DistributedDataParallel (``ddp``) or all-reducing the parameter gradients (sum) itself before
each SGD step, and saves per step its output, its input gradient and this rank's parameter
gradients (``ddp``: the sum over the ranks), and the final buffers; with ``compile`` the
model runs through torch.compile (the count of graphs it made is saved too). OUT_FILE receives the
list of those results.
"""
import datetime
import sys

import torch
import torch.distributed as dist

import bnfast.torch as bt


def make_model(channels_in=3, channels=4):
    """conv -> batch norm -> ReLU (the block both this worker and the test build)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels_in, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels), torch.nn.ReLU())


def run_case(rank, case):
    fmt = getattr(torch, case["memory_format"])
    start = sum(case["sizes"][:rank])
    rows = slice(start, start + case["sizes"][rank])
    model = make_model(case["x"].shape[1], case["channels"]).to(case["x"].dtype)
    model.load_state_dict(case["state_dict"])
    model = bt.convert_sync_batchnorm(model)
    assert type(model[1]) is bt.SyncBatchNorm
    model = model.to(memory_format=fmt)
    world_size = dist.get_world_size()
    if case["ddp"]:
        # DistributedDataParallel all-reduces the gradients and divides them by world_size.
        trained = torch.nn.parallel.DistributedDataParallel(model)
    else:
        trained = model
    if case.get("compile"):
        # The synchronized forward stays eager (torch.compiler.disable): the rest compiles.
        torch._dynamo.reset()
        trained = torch.compile(trained, backend="aot_eager")
    # DDP averages the gradients over the ranks: scale the rate so that the step is the sum's.
    lr = case["lr"] * (world_size if case["ddp"] else 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    steps = []
    for g in case["g"]:
        x = case["x"][rows].clone().contiguous(memory_format=fmt).requires_grad_(True)
        y = trained(x)
        (y * g[rows]).sum().backward()
        if case["ddp"]:  # summed over the ranks already: undo DDP's average
            grads = {name: p.grad * world_size for name, p in model.named_parameters()}
        else:  # this rank's own; summed over the ranks here, as DDP would
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            for p in model.parameters():
                dist.all_reduce(p.grad)
        steps.append({"y": y.detach().clone(), "dx": x.grad.clone(), "grads": grads,
                      "y_channels_last": y.is_contiguous(memory_format=torch.channels_last)})
        opt.step()
        opt.zero_grad()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] if case.get("compile") else 0
    return {"steps": steps, "graphs": graphs,
            "buffers": {k: v.clone() for k, v in model.state_dict().items()}}


def main(rank, world_size, init_method, case_file, out_file):
    torch.set_num_threads(1)
    cases = torch.load(case_file, weights_only=False)
    dist.init_process_group("gloo", init_method=init_method, rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=120))
    try:
        torch.save([run_case(rank, case) for case in cases], out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
