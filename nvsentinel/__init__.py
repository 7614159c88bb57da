"""nvsentinel: Kubernetes-native GPU health monitoring and automated remediation.

The package root only names the version; the public API lives in the modules that own it
(`nvsentinel.store`, `nvsentinel.fanout`, `nvsentinel.errors`, ...). Importing the root must stay
cheap and must not import grpc, kubernetes or pynvml.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
