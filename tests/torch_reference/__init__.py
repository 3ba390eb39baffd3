"""PyTorch definitions of torchvision's ImageNet ResNet-152 and Inception-v3, used only by tests.

torchvision itself cannot be imported beside the CPU build of torch the tests run with, so these
modules are written here from the published architectures (He et al. 2016 with torchvision's
stride on the 3x3 convolution; Szegedy et al. 2016 as torchvision lays it out), with torchvision's
module names, so their state dicts have the key names and tensor shapes of torchvision's released
files (`resnet152-b121ed2d.pth`, `inception_v3_google-*.pth`). Nothing here is imported by the
package.
"""
