//! The response cache: a memory tier, and an optional Redis tier ([`redis`]) shared by every
//! gateway instance on the top-level `redis:` connection.

pub mod redis;
