# The umbrella test (cmake -P umbrella_check.cmake): <ftm/ftm.hpp> includes every
# public header but the engines, and docs/reference.md's header table lists exactly
# the headers there are. Fails, naming the difference, when a header is added,
# removed or left out of either.
#
#   FTM_SOURCE_DIR   the ftm source tree

cmake_policy(VERSION 3.23)

if(NOT FTM_SOURCE_DIR)
  message(FATAL_ERROR "umbrella_check.cmake: FTM_SOURCE_DIR is not set")
endif()
set(problems "")

# Every public header: include/ftm/*.hpp but the umbrella, and the engines.
file(GLOB public RELATIVE "${FTM_SOURCE_DIR}/include" "${FTM_SOURCE_DIR}/include/ftm/*.hpp")
list(REMOVE_ITEM public "ftm/ftm.hpp")
file(GLOB engines RELATIVE "${FTM_SOURCE_DIR}/include"
     "${FTM_SOURCE_DIR}/include/ftm/engines/*.hpp")
list(SORT public)
list(SORT engines)
if(NOT public OR NOT engines)
  message(FATAL_ERROR "umbrella_check.cmake: no headers under ${FTM_SOURCE_DIR}/include/ftm")
endif()

# Reports what `have` lacks of `want`, and what it has beyond.
function(compare what have want)
  set(missing ${want})
  set(extra ${have})
  if(have)
    list(REMOVE_ITEM missing ${have})
  endif()
  if(want)
    list(REMOVE_ITEM extra ${want})
  endif()
  if(missing)
    list(JOIN missing ", " m)
    list(APPEND problems "${what} lacks ${m}")
  endif()
  if(extra)
    list(JOIN extra ", " e)
    list(APPEND problems "${what} has ${e}, which it should not")
  endif()
  set(problems "${problems}" PARENT_SCOPE)
endfunction()

# The umbrella's includes.
file(STRINGS "${FTM_SOURCE_DIR}/include/ftm/ftm.hpp" lines REGEX "^#include <")
set(included "")
foreach(line IN LISTS lines)
  string(REGEX REPLACE "^#include <([^>]*)>.*" "\\1" header "${line}")
  list(APPEND included "${header}")
endforeach()
compare("<ftm/ftm.hpp> (every public header but the engines)" "${included}" "${public}")

# docs/reference.md: the rows of the table under "## Headers".
file(STRINGS "${FTM_SOURCE_DIR}/docs/reference.md" lines)
set(in_table FALSE)
set(listed "")
set(umbrella_row "")
foreach(line IN LISTS lines)
  if(line STREQUAL "## Headers")
    set(in_table TRUE)
  elseif(in_table AND line MATCHES "^## ")
    break()
  elseif(in_table AND line MATCHES "^\\| `<(ftm/[^>]*)>` \\|")
    set(header "${CMAKE_MATCH_1}")
    if(header STREQUAL "ftm/ftm.hpp")
      set(umbrella_row "${line}")
    else()
      list(APPEND listed "${header}")
    endif()
  endif()
endforeach()
if(NOT umbrella_row)
  list(APPEND problems "docs/reference.md's header table has no row for <ftm/ftm.hpp>")
elseif(NOT umbrella_row MATCHES "every header below but the engines")
  list(APPEND problems "docs/reference.md's <ftm/ftm.hpp> row does not say it includes every "
                       "header below but the engines: ${umbrella_row}")
endif()
set(all_headers ${public} ${engines})
compare("docs/reference.md's header table" "${listed}" "${all_headers}")

if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "the umbrella header and its documentation drifted:\n  ${text}")
endif()
list(LENGTH public n)
list(LENGTH engines m)
message(STATUS "umbrella: <ftm/ftm.hpp> includes the ${n} public headers, and "
               "docs/reference.md lists them and the ${m} engines")
