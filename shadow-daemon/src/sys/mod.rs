//! Every call into libc the daemon makes, each behind a safe function, as aya keeps its own in
//! `aya/src/sys/`; and the one other unsafe act, reading plain-data records as bytes. The rest
//! of the crate never says `unsafe` (but for handing aya's ring buffers to tokio, in
//! `capture`). Each unsafe block carries its SAFETY note. A leaf: it knows no other module of
//! the crate.
//!
//! By concern: `errno` (telling kernel errors apart), `fs` (filesystem kinds, cgroup v2 mounts), `net` (interface names and indexes),
//! `netlink` (the link-notification socket), `notify` (systemd's readiness datagrams), `plain` (records as bytes), `process` (uid,
//! umask), `socket` (socket options, TCP_INFO), `time` (CLOCK_MONOTONIC), `timer` (the
//! daemon's tick, a timerfd), `timestamp` (the
//! kernel's packet timestamps).

pub(crate) mod errno;
pub(crate) mod fs;
pub(crate) mod net;
pub(crate) mod netlink;
pub(crate) mod notify;
pub(crate) mod plain;
pub(crate) mod process;
pub(crate) mod socket;
pub(crate) mod time;
pub(crate) mod timer;
pub(crate) mod timestamp;
