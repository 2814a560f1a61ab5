//! The CCO web console: server-rendered pages for administrators, supervisors and collectors.
//!
//! It is a "backend for the frontend": every page is rendered here, and every call to the
//! gateway and the allocator carries the signed-in person's own credential (their CCO JWT or
//! an administrator's API key), so the services alone decide what a person may see and do.
//! [`app::Console`] serves it; [`pages`] holds one module per area; [`views`] the frame and
//! the pieces; [`session`] the sealed cookie; [`i18n`] every text in English and Chinese.

pub mod app;
pub mod i18n;
pub mod pages;
pub mod session;
pub mod settings;
pub mod views;
pub mod web;
