"""Which nn.ModuleList method.name=layers trains the top of: the model's own decoder stack."""

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from tunelab.config import MethodConfig
from tunelab.models.llama import LlamaForCausalLM as OurLlama
from tunelab.models.llama_config import LlamaConfig as OurConfig
from tunelab.training.build import apply_method, decoder_layers


def _hf_llama(layers: int = 2) -> nn.Module:
    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=layers, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_the_decoder_stack_is_chosen_over_a_longer_list_elsewhere():
    """The `layers` method took the longest nn.ModuleList as the decoder stack: a model with a longer list elsewhere
    (a vision tower's blocks, a stack of adapters) had those trained instead of its top decoder layers, and the
    decoder left frozen. The model's own decoder (get_decoder().layers) is taken now."""
    model = _hf_llama()
    model.extra = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))
    assert decoder_layers(model) is model.model.layers
    apply_method(model, MethodConfig(name="layers", top_layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("model.layers.1.") for n in trained)


def test_a_classifier_body_and_our_own_model_give_their_decoder():
    """A head's body (transformers' base model inside a wrapper) and tunelab's own Llama give their decoder too."""
    body = _hf_llama().model
    wrapper = nn.Module()
    wrapper.body, wrapper.blocks = body, nn.ModuleList(nn.Identity() for _ in range(4))
    assert decoder_layers(wrapper) is body.layers
    ours = OurLlama(OurConfig.from_hf(_hf_llama().config))
    ours.extra = nn.ModuleList(nn.Identity() for _ in range(9))
    assert decoder_layers(ours) is ours.model.layers


def test_a_model_without_a_decoder_falls_back_to_the_longest_list():
    """A model that offers no get_decoder(): the longest nn.ModuleList, as before."""
    model = nn.Module()
    model.short, model.long = nn.ModuleList([nn.Identity()]), nn.ModuleList(nn.Identity() for _ in range(3))
    assert decoder_layers(model) is model.long
