"""histobag-apache: permissively licensed feature extractors for histobag.

ImageNet models through timm (``<arch>_imagenet``) and pathology foundation models whose
weights are released under Apache-2.0, MIT or BSD licences.
"""

__version__ = "0.1.0"
