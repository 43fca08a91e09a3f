//! `ipBlock` peers: a CIDR minus its `except` ranges, IPv4 or IPv6.

use std::net::IpAddr;

use ipnet::IpNet;

/// A compiled `ipBlock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlockMatcher {
    cidr: IpNet,
    except: Vec<IpNet>,
}

/// What is wrong with an ipBlock, relative to the ipBlock's own path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlockError {
    pub field: String,
    pub message: String,
}

impl IpBlockMatcher {
    pub fn compile(cidr: &str, except: &[String]) -> Result<Self, IpBlockError> {
        let cidr_net = parse_cidr(cidr).map_err(|message| IpBlockError {
            field: "cidr".into(),
            message,
        })?;
        let mut nets = Vec::with_capacity(except.len());
        for (i, e) in except.iter().enumerate() {
            let field = format!("except[{i}]");
            let net = parse_cidr(e).map_err(|message| IpBlockError {
                field: field.clone(),
                message,
            })?;
            // The API server accepts only an except range strictly inside the block: one
            // outside could never apply, and one equal to it would empty the block.
            if !cidr_net.contains(&net) || net.prefix_len() <= cidr_net.prefix_len() {
                return Err(IpBlockError {
                    field,
                    message: format!("{e} is not a strict subset of cidr {cidr}"),
                });
            }
            nets.push(net);
        }
        Ok(IpBlockMatcher {
            cidr: cidr_net,
            except: nets,
        })
    }

    pub fn matches(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    // Host bits may be set (`10.0.0.1/24`): the API server accepts that and means the network.
    text.trim()
        .parse::<IpNet>()
        .map_err(|_| format!("invalid CIDR {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlockMatcher {
        let except: Vec<String> = except
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        IpBlockMatcher::compile(cidr, &except).unwrap()
    }

    #[test]
    fn an_except_range_must_be_strictly_inside_the_block() {
        for (cidr, except) in [
            ("10.0.0.0/16", "10.1.0.0/24"),
            ("10.0.0.0/16", "10.0.0.0/16"),
            ("10.0.0.0/16", "10.0.0.0/8"),
            ("fd00::/64", "fd00::/64"),
        ] {
            let err = IpBlockMatcher::compile(cidr, &[except.to_string()]).unwrap_err();
            assert_eq!(err.field, "except[0]");
            assert!(err.message.contains("strict subset"), "{err:?}");
        }
        assert!(IpBlockMatcher::compile("10.0.0.0/16", &["10.0.0.0/17".into()]).is_ok());
    }

    #[test]
    fn v4_block_with_except() {
        let b = block("10.0.0.0/16", &["10.0.5.0/24", "10.0.6.7/32"]);
        assert!(b.matches("10.0.0.1".parse().unwrap()));
        assert!(b.matches("10.0.255.255".parse().unwrap()));
        assert!(!b.matches("10.0.5.9".parse().unwrap()));
        assert!(!b.matches("10.0.6.7".parse().unwrap()));
        assert!(b.matches("10.0.6.8".parse().unwrap()));
        assert!(!b.matches("10.1.0.1".parse().unwrap()));
        assert!(!b.matches("::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn v6_block_and_catch_all() {
        let b = block("fd00::/8", &["fd00:1::/32"]);
        assert!(b.matches("fd12::1".parse().unwrap()));
        assert!(!b.matches("fd00:1::5".parse().unwrap()));
        assert!(!b.matches("10.0.0.1".parse().unwrap()));
        let all = block("0.0.0.0/0", &[]);
        assert!(all.matches("203.0.113.9".parse().unwrap()));
        assert!(!all.matches("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn host_bits_mean_the_network() {
        assert!(block("10.0.0.7/24", &[]).matches("10.0.0.200".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_name_the_field() {
        let e = IpBlockMatcher::compile("10.0.0.0/33", &[]).unwrap_err();
        assert_eq!(e.field, "cidr");
        let e = IpBlockMatcher::compile("10.0.0.0/8", &["10.1.0.0/16".into(), "nope".into()])
            .unwrap_err();
        assert_eq!(e.field, "except[1]");
        let e = IpBlockMatcher::compile("10.0.0.0/8", &["11.0.0.0/16".into()]).unwrap_err();
        assert_eq!(e.field, "except[0]");
        assert!(e.message.contains("not a strict subset"));
    }
}
