//! Port entries of a rule: protocol (TCP by default), a number, a `port..=endPort` range, a
//! named port resolved on the destination pod, or no port at all (every port of the protocol).

use std::sync::Arc;

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use crate::inventory::pod_ports::{validate_port_name, NamedPort};
use crate::model::Protocol;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port`, or `port..=endPort`.
    Range(u16, u16),
    /// A port name, looked up on the destination pod's container ports.
    Named(Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatcher {
    pub protocol: Protocol,
    pub spec: PortSpec,
}

/// What is wrong with a port entry, relative to the entry's own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortError {
    pub field: &'static str,
    pub message: String,
}

impl PortMatcher {
    pub fn compile(p: &NetworkPolicyPort) -> Result<PortMatcher, PortError> {
        let protocol = match p.protocol.as_deref() {
            // The API is case-sensitive here; "tcp" is rejected by the API server.
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(PortError {
                    field: "protocol",
                    message: format!("unsupported protocol {other:?} (expected TCP, UDP or SCTP)"),
                })
            }
        };
        let spec = match (&p.port, p.end_port) {
            (None, None) => PortSpec::Any,
            (None, Some(_)) => {
                return Err(PortError {
                    field: "endPort",
                    message: "endPort requires port".into(),
                })
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = valid_port(*n).ok_or_else(|| PortError {
                    field: "port",
                    message: format!("{n} is not a port number (1-65535)"),
                })?;
                let end = match end {
                    None => start,
                    Some(e) => {
                        let end = valid_port(e).ok_or_else(|| PortError {
                            field: "endPort",
                            message: format!("{e} is not a port number (1-65535)"),
                        })?;
                        if end < start {
                            return Err(PortError {
                                field: "endPort",
                                message: format!("endPort {end} is below port {start}"),
                            });
                        }
                        end
                    }
                };
                PortSpec::Range(start, end)
            }
            (Some(IntOrString::String(name)), end) => {
                if end.is_some() {
                    return Err(PortError {
                        field: "endPort",
                        message: "endPort cannot be used with a named port".into(),
                    });
                }
                validate_port_name(name).map_err(|message| PortError {
                    field: "port",
                    message,
                })?;
                PortSpec::Named(Arc::from(name.as_str()))
            }
        };
        Ok(PortMatcher { protocol, spec })
    }

    /// Does this entry admit `port`/`protocol` towards a destination with `dst_ports`
    /// (its named container ports; empty when the destination is not a pod)?
    pub fn matches(&self, port: u16, protocol: Protocol, dst_ports: &[NamedPort]) -> bool {
        if self.protocol != protocol {
            return false;
        }
        match &self.spec {
            PortSpec::Any => true,
            PortSpec::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortSpec::Named(name) => dst_ports
                .iter()
                .any(|n| n.port == port && n.protocol == protocol && *n.name == **name),
        }
    }
}

impl std::fmt::Display for PortMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.spec {
            PortSpec::Any => write!(f, "any port/{}", self.protocol),
            PortSpec::Range(lo, hi) if lo == hi => write!(f, "{lo}/{}", self.protocol),
            PortSpec::Range(lo, hi) => write!(f, "{lo}-{hi}/{}", self.protocol),
            PortSpec::Named(name) => write!(f, "{name:?}/{}", self.protocol),
        }
    }
}

fn valid_port(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(
        protocol: Option<&str>,
        port: Option<IntOrString>,
        end: Option<i32>,
    ) -> NetworkPolicyPort {
        NetworkPolicyPort {
            protocol: protocol.map(str::to_string),
            port,
            end_port: end,
        }
    }

    #[test]
    fn protocol_defaults_to_tcp() {
        let m = PortMatcher::compile(&port(None, Some(IntOrString::Int(80)), None)).unwrap();
        assert!(m.matches(80, Protocol::Tcp, &[]));
        assert!(!m.matches(80, Protocol::Udp, &[]));
        assert!(!m.matches(81, Protocol::Tcp, &[]));
    }

    #[test]
    fn no_port_means_every_port_of_the_protocol() {
        let m = PortMatcher::compile(&port(Some("UDP"), None, None)).unwrap();
        assert!(m.matches(1, Protocol::Udp, &[]));
        assert!(m.matches(65535, Protocol::Udp, &[]));
        assert!(!m.matches(53, Protocol::Tcp, &[]));
    }

    #[test]
    fn end_port_is_an_inclusive_range() {
        let m = PortMatcher::compile(&port(Some("SCTP"), Some(IntOrString::Int(80)), Some(82)))
            .unwrap();
        assert!(!m.matches(79, Protocol::Sctp, &[]));
        assert!(m.matches(80, Protocol::Sctp, &[]));
        assert!(m.matches(82, Protocol::Sctp, &[]));
        assert!(!m.matches(83, Protocol::Sctp, &[]));
    }

    #[test]
    fn named_port_resolves_on_the_destination_with_its_protocol() {
        let m = PortMatcher::compile(&port(None, Some(IntOrString::String("web".into())), None))
            .unwrap();
        let ports = [
            NamedPort {
                name: "web".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            NamedPort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp,
            },
        ];
        assert!(m.matches(8080, Protocol::Tcp, &ports));
        assert!(!m.matches(80, Protocol::Tcp, &ports));
        assert!(!m.matches(8080, Protocol::Tcp, &[]));
        let udp = [NamedPort {
            name: "web".into(),
            port: 8080,
            protocol: Protocol::Udp,
        }];
        assert!(!m.matches(8080, Protocol::Tcp, &udp));
    }

    #[test]
    fn invalid_entries_are_errors() {
        let err = |p| PortMatcher::compile(&p).unwrap_err();
        assert_eq!(err(port(Some("ICMP"), None, None)).field, "protocol");
        assert_eq!(err(port(Some("tcp"), None, None)).field, "protocol");
        assert_eq!(
            err(port(None, Some(IntOrString::Int(0)), None)).field,
            "port"
        );
        assert_eq!(
            err(port(None, Some(IntOrString::Int(70000)), None)).field,
            "port"
        );
        let below = err(port(None, Some(IntOrString::Int(90)), Some(80)));
        assert_eq!(below.field, "endPort");
        assert!(below.message.contains("below"));
        assert_eq!(err(port(None, None, Some(80))).field, "endPort");
        let named = IntOrString::String("web".into());
        assert_eq!(err(port(None, Some(named), Some(90))).field, "endPort");
        assert_eq!(
            err(port(None, Some(IntOrString::String("80".into())), None)).field,
            "port"
        );
        assert_eq!(
            err(port(None, Some(IntOrString::String("Web".into())), None)).field,
            "port"
        );
    }
}
