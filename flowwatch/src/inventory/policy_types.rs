//! The directions a NetworkPolicy governs: the API server's defaulting of `policyTypes`, in one
//! place for the policy compiler (strict) and for policies that cannot be compiled or decoded
//! (lenient: an unknown type counts as both directions).

/// What `policyTypes` declares, after defaulting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTypes {
    pub ingress: bool,
    pub egress: bool,
    /// The first entry that is neither `Ingress` nor `Egress` (`None` text: not a string), with
    /// its index.
    pub unknown: Option<(usize, Option<String>)>,
}

impl DeclaredTypes {
    /// The API server's defaulting: without policyTypes (or with an empty list), Ingress always,
    /// and Egress when the policy has at least one egress rule (so `egress: []` does not make
    /// it Egress). `types` yields each entry's text (`None`: not a string).
    pub fn of<'a>(
        types: Option<impl IntoIterator<Item = Option<&'a str>>>,
        has_egress_rules: bool,
    ) -> DeclaredTypes {
        let mut declared = DeclaredTypes {
            ingress: false,
            egress: false,
            unknown: None,
        };
        let mut any = false;
        for (i, t) in types.into_iter().flatten().enumerate() {
            any = true;
            match t {
                Some("Ingress") => declared.ingress = true,
                Some("Egress") => declared.egress = true,
                other => {
                    if declared.unknown.is_none() {
                        declared.unknown = Some((i, other.map(str::to_string)));
                    }
                }
            }
        }
        if !any {
            declared.ingress = true;
            declared.egress = has_egress_rules;
        }
        declared
    }

    /// (ingress, egress), read leniently: a policy with an unknown type is invalid either way,
    /// so it is taken to govern both directions (a verdict it might have changed is flagged
    /// rather than trusted).
    pub fn lenient(&self) -> (bool, bool) {
        match self.unknown {
            Some(_) => (true, true),
            None => (self.ingress, self.egress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(types: Option<&[&str]>, egress_rules: bool) -> DeclaredTypes {
        DeclaredTypes::of(types.map(|t| t.iter().map(|s| Some(*s))), egress_rules)
    }

    #[test]
    fn defaults_as_the_api_server_does() {
        assert_eq!(of(None, false).lenient(), (true, false));
        assert_eq!(of(None, true).lenient(), (true, true));
        assert_eq!(of(Some(&[]), true).lenient(), (true, true));
        assert_eq!(of(Some(&["Egress"]), false).lenient(), (false, true));
        assert_eq!(of(Some(&["Ingress"]), true).lenient(), (true, false));
    }

    #[test]
    fn an_unknown_type_is_named_and_counts_as_both_leniently() {
        let d = of(Some(&["Ingress", "Sideways"]), false);
        assert_eq!(d.unknown, Some((1, Some("Sideways".into()))));
        assert_eq!(d.lenient(), (true, true));
        let d = DeclaredTypes::of(Some([Some("Egress"), None]), false);
        assert_eq!(d.unknown, Some((1, None)));
    }
}
