"""openim-migrate: move OpenIM's data stores into Kubernetes and prove nothing was lost."""

__version__ = "0.1.0"
