import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # random inputs do not depend on which tests ran before
