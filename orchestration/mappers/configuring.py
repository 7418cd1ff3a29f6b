"""A mapper's configuration: KubeEdge's mapper ``config.yaml``, flags, or arguments.

The file is mapper-framework's::

    grpc_server:
      socket_path: /etc/kubeedge/modbus.sock   # where our DeviceMapperService listens
    common:
      name: modbus-mapper
      version: v1.0.0
      api_version: v1.0.0
      protocol: modbus                         # devices with this protocolName are ours
      address: 127.0.0.1                       # mapper-framework's REST address (unused here)
      edgecore_sock: /etc/kubeedge/dmi.sock    # EdgeCore's DeviceManagerService
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..apis.dmi import MapperInfo

__all__ = ["DEFAULT_EDGECORE_SOCKET", "MapperConfig", "parse_args"]

DEFAULT_EDGECORE_SOCKET = "/etc/kubeedge/dmi.sock"


@dataclass(frozen=True)
class MapperConfig:
    name: str
    protocol: str
    socket_path: str = ""  # empty: /etc/kubeedge/<protocol>.sock
    edgecore_sock: str = DEFAULT_EDGECORE_SOCKET
    version: str = ""
    api_version: str = ""
    address: str = ""

    def __post_init__(self) -> None:
        if not self.socket_path:
            object.__setattr__(self, "socket_path", f"/etc/kubeedge/{self.protocol}.sock")
        self.mapper_info()  # checks name, protocol and socket path now, not at registration

    def mapper_info(self) -> MapperInfo:
        """What the mapper registers: the address EdgeCore calls back is our socket."""
        return MapperInfo(
            name=self.name,
            version=self.version,
            api_version=self.api_version,
            protocol=self.protocol,
            address=self.socket_path,
            state="ok",
        )

    @classmethod
    def from_yaml(cls, text: str, **overrides: str) -> MapperConfig:
        """From a config.yaml's text; non-empty ``overrides`` (field names) win."""
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config is not YAML: {exc}") from None
        if not isinstance(doc, Mapping):
            raise ValueError("config must be a mapping")
        common = _section(doc, "common")
        server = _section(doc, "grpc_server")
        values: dict[str, Any] = {
            "name": common.get("name", ""),
            "protocol": common.get("protocol", ""),
            "socket_path": server.get("socket_path", ""),
            "edgecore_sock": common.get("edgecore_sock", DEFAULT_EDGECORE_SOCKET),
            "version": common.get("version", ""),
            "api_version": common.get("api_version", ""),
            "address": common.get("address", ""),
        }
        values.update({k: v for k, v in overrides.items() if v})
        for key, value in values.items():
            if not isinstance(value, str):
                raise ValueError(f"config: {key} must be a string, not {value!r}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path, **overrides: str) -> MapperConfig:
        return cls.from_yaml(Path(path).read_text(), **overrides)


def parse_args(argv: Sequence[str] | None, *, protocol: str, name: str) -> tuple[MapperConfig, str]:
    """A mapper's command line: ``--config FILE`` and/or flags. Returns (config, log level);
    exits with a usage message on bad input, as argparse does."""
    parser = argparse.ArgumentParser(description=f"KubeEdge DMI mapper for {protocol}")
    parser.add_argument("--config", help="mapper config.yaml (mapper-framework's format)")
    parser.add_argument("--socket", default="", help="this mapper's gRPC Unix socket")
    parser.add_argument("--edgecore-sock", default="", help="EdgeCore's DMI socket")
    parser.add_argument("--name", default="", help="mapper name")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    overrides = {
        "socket_path": args.socket,
        "edgecore_sock": args.edgecore_sock,
        "name": args.name,
    }
    try:
        if args.config:
            config = MapperConfig.load(args.config, **overrides)
            if config.protocol != protocol:
                raise ValueError(f"config protocol {config.protocol!r} is not {protocol!r}")
        else:
            config = MapperConfig(
                name=args.name or name,
                protocol=protocol,
                socket_path=args.socket,
                edgecore_sock=args.edgecore_sock or DEFAULT_EDGECORE_SOCKET,
            )
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return config, str(args.log_level)


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = doc.get(key) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"config: {key} must be a mapping")
    return section
