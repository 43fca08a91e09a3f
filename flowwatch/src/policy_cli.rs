//! The offline `flowwatch policy ...` commands (eval, explain, coverage).
