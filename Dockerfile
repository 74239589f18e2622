# Multi-stage build: a static binary on distroless, non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY controller/ controller/
COPY couch/ couch/
COPY metrics/ metrics/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/couchdb-controller ./cmd/couchdb-controller

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/couchdb-controller /couchdb-controller
USER 65532:65532
ENTRYPOINT ["/couchdb-controller"]
