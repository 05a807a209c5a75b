# syntax=docker/dockerfile:1
FROM alpine:3.20
ARG GREETING=hello
RUN <<EOT
set -e
echo "$GREETING" > /greeting
EOT
RUN <<'SCRIPT'
#!/bin/sh
echo from a script file
SCRIPT
COPY <<EOF /etc/app.conf
greeting=${GREETING}
EOF
COPY --link --from=busybox:1.36 /bin/busybox /bin/busybox
CMD cat /greeting
