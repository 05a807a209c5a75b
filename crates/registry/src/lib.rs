//! Distribution client: resolve, pull and push images, authenticate (basic and bearer tokens, Docker's
//! config.json and credential helpers), retry.
