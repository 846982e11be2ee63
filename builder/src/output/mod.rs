//! Writers: each takes a Tree and produces one output format.

pub mod tar;
