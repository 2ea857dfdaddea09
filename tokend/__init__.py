"""tokend: keeps a valid VMware Cloud Foundation SDDC Manager token and serves it on a Unix socket."""

__version__ = "0.1.0"

DEFAULT_CONFIG_PATH = "/etc/tokend/config.toml"
DEFAULT_SOCKET = "/run/tokend/tokend.sock"
DEFAULT_STATE_DIR = "/var/lib/tokend"
