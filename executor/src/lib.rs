//! Sandboxes: an overlay snapshot mounted as the root, new namespaces, /proc /dev /etc/hosts, users and
//! groups resolved from the image, and the process itself. Used by RUN and by `kiln run`.
