//! The files sub-API of isolated sessions: paths as seen inside the jail resolved against the
//! session's mounts on the host, with overlay merged-view semantics.
