//! (skeleton; filled in by the issue-11 work)
