import pytest
import torch
import torch_pruning as tp

from apib.models import get_model, model_names

CIFAR_MODELS = ["resnet20", "resnet56", "resnet110", "vgg16", "googlenet"]


# Each model once, with 10 or 100 classes (CIFAR-10 / CIFAR-100 heads).
@pytest.mark.parametrize("name, num_classes", list(zip(CIFAR_MODELS, [10, 100, 10, 100, 10], strict=True)))
def test_cifar_models_forward(name, num_classes):
    model = get_model(name, num_classes).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_resnet50_forward():
    # 64×64 keeps the test fast; the global pool makes any size ≥ 32 valid.
    model = get_model("resnet50", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "googlenet"])
def test_cifar_models_accept_other_input_sizes(name):
    # 16×16 is the smallest size VGG-16 takes (four 2×2 pools); 40×40 is not a power of two.
    model = get_model(name).eval()
    with torch.no_grad():
        for size in (16, 40):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, expected",
    # Published sizes (option-A shortcuts add nothing; our 1×1 shortcuts add about 3k parameters).
    [
        ("resnet20", 0.27e6),
        ("resnet56", 0.85e6),
        ("resnet110", 1.7e6),
        ("vgg16", 14.7e6),
        ("googlenet", 6.2e6),
    ],
)
def test_parameter_counts(name, expected):
    count = sum(p.numel() for p in get_model(name).parameters())
    assert count == pytest.approx(expected, rel=0.03)


def test_model_names_and_unknown_name():
    assert set(model_names()) == {"resnet20", "resnet56", "resnet110", "vgg16", "googlenet", "resnet50"}
    with pytest.raises(ValueError, match="resnet18.*valid names: resnet20"):
        get_model("resnet18")


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        get_model("resnet20", num_classes)


@pytest.mark.parametrize("wrap", [None, "net", "state_dict"])
def test_pretrained_path_round_trip(tmp_path, wrap):
    source = get_model("resnet20", 10)
    state = source.state_dict()
    if wrap == "net":
        # kuangliu's checkpoints, saved from nn.DataParallel: wrapped and "module."-prefixed.
        state = {"net": {f"module.{k}": v for k, v in state.items()}, "acc": 91.2, "epoch": 199}
    elif wrap == "state_dict":
        state = {"state_dict": state}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = get_model("resnet20", 10, pretrained_path=path)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        get_model("resnet20", pretrained_path=tmp_path / "missing.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="state dict"):
        get_model("resnet20", pretrained_path=tmp_path / "tensor.pth")
    # Weights of another class count must not load silently.
    torch.save(get_model("resnet20", 100).state_dict(), tmp_path / "c100.pth")
    with pytest.raises(
        ValueError, match=r"c100.pth.*2 mismatched \(fc.weight \(100, 64\) where the model has \(10, 64\)"
    ):
        get_model("resnet20", 10, pretrained_path=tmp_path / "c100.pth")


def _inner_conv(model, name):
    """A conv whose filters APIB prunes: a basic block's inner channels, VGG's conv outputs, an Inception
    3×3 branch's reduce channels."""
    if name.startswith("resnet"):
        return model.layer1[0].conv1
    if name == "vgg16":
        return model.features[0]
    return model.a3.b2[0]


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_torch_pruning_traces_and_prunes(name):
    model = get_model(name).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    assert list(graph.get_all_groups(root_module_types=[torch.nn.Conv2d]))
    conv = _inner_conv(model, name)
    before = conv.out_channels
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 2]).prune()
    assert conv.out_channels == before - 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
