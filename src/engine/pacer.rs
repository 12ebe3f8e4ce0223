//! Pacing calls under a per-source budget, with the crate's one [`Pacer`] (in
//! [`crate::pacer`], which the status writer shares).

pub(crate) use crate::pacer::Pacer;
