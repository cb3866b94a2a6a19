//! The integration suite: every test starts the real `execd` (or `sandboxd`) binary.

mod auth;
mod cli;
mod code;
mod command;
mod docker;
mod faults;
mod files;
mod init;
mod isolated;
mod isolated_docker;
mod limits;
mod load;
mod logging;
mod metrics;
mod prepull;
mod proxy;
mod pty;
mod replay;
mod sandboxd;
mod sandboxd_limits;
mod sandboxd_startup;
mod security;
mod session;
mod template_builds;
mod util;
mod watch;
