# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
ARG BASE=alpine:3.20

FROM golang:${GO_VERSION} AS build
ARG GO_VERSION
ENV CGO_ENABLED=0 GOFLAGS="-trimpath"
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/.cache/go-build \
    --mount=type=bind,source=.,target=/src,rw \
    go build -o /out/app ./cmd/app

FROM ${BASE} AS unused
RUN echo never built

FROM $BASE
LABEL org.opencontainers.image.title="demo app" version=$GO_VERSION
COPY --from=build --chmod=755 /out/app /usr/local/bin/app
USER 1000:1000
EXPOSE 8080 9090/udp
HEALTHCHECK --interval=30s --retries=3 CMD wget -qO- http://localhost:8080/ || exit 1
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["serve"]
