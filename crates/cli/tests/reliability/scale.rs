//! Scale (issue 13, item 6).
