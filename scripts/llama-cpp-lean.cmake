# Included by llama.cpp's own project() call when scripts/install-llama-cpp.sh builds llama-cpp-python
# (CMAKE_PROJECT_llama.cpp_INCLUDE): the GGUF tests need only libllama and ggml, so llama.cpp's
# `common` library (chat templates, argument parsing, HTTP: 60 of 140 compile steps), which
# llama-cpp-python forces on for its multimodal library, is left out with that library.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
