// Purpose: symbol-visibility macro for the nnkit core library.
// Ownership: none; included by every public header. Plugins are built with hidden visibility, so
// anything a plugin must see from the core (exception types, interfaces with vtables) is NNKIT_API.
#pragma once

#if defined(_WIN32)
#define NNKIT_API __declspec(dllexport)
#else
#define NNKIT_API __attribute__((visibility("default")))
#endif
