# The fault-point test (cmake -P fault_points_check.cmake): the lists in
# include/ftm/detail/fault.hpp name every fault point in the code, and only those.
# A point is `FTM_FAULT_POINT("name")`, or a string literal with a listed point's
# prefix (`commit.`, `log.`, ...) handed to code that reaches one (`copy_held`).
# Fails, naming the points, when a point is added without its name in the list, or a
# listed point is in no code.
#
#   FTM_SOURCE_DIR   the ftm source tree
#   FAULT_HEADER     optional: the list to check (default: the tree's fault.hpp)

cmake_policy(VERSION 3.23)

if(NOT FTM_SOURCE_DIR)
  message(FATAL_ERROR "fault_points_check.cmake: FTM_SOURCE_DIR is not set")
endif()
if(NOT FAULT_HEADER)
  set(FAULT_HEADER "${FTM_SOURCE_DIR}/include/ftm/detail/fault.hpp")
endif()

# The listed names: the quoted names inside fault.hpp's `..._names{ ... }` arrays.
file(READ "${FAULT_HEADER}" fault_hpp)
string(REGEX MATCHALL "_names\\{[^}]*\\}" lists "${fault_hpp}")
set(listed "")
foreach(list IN LISTS lists)
  string(REGEX MATCHALL "\"[a-z_]+\\.[a-z_]+\"" names "${list}")
  foreach(name IN LISTS names)
    string(REPLACE "\"" "" name "${name}")
    list(APPEND listed "${name}")
  endforeach()
endforeach()
if(NOT listed)
  message(FATAL_ERROR "fault_points_check.cmake: no fault point names in ${FAULT_HEADER}")
endif()
set(prefixes "")
foreach(name IN LISTS listed)
  string(REGEX REPLACE "\\..*" "" prefix "${name}")
  list(APPEND prefixes "${prefix}")
endforeach()
list(REMOVE_DUPLICATES prefixes)
list(JOIN prefixes "|" prefix_alternatives)

# The points in the code, fault.hpp itself aside.
file(GLOB_RECURSE headers "${FTM_SOURCE_DIR}/include/ftm/*.hpp")
list(REMOVE_ITEM headers "${FTM_SOURCE_DIR}/include/ftm/detail/fault.hpp")
set(in_code "")
foreach(header IN LISTS headers)
  file(READ "${header}" text)
  string(REGEX MATCHALL "FTM_FAULT_POINT\\(\"[^\"]*\"\\)" calls "${text}")
  string(REGEX MATCHALL "\"(${prefix_alternatives})\\.[a-z_]+\"" literals "${text}")
  foreach(hit IN LISTS calls literals)
    string(REGEX REPLACE ".*\"([^\"]*)\".*" "\\1" name "${hit}")
    list(APPEND in_code "${name}")
  endforeach()
endforeach()
list(REMOVE_DUPLICATES in_code)

set(problems "")
foreach(name IN LISTS in_code)
  if(NOT name IN_LIST listed)
    string(APPEND problems "\n  ${name}: in the code, missing from ${FAULT_HEADER}")
  endif()
endforeach()
foreach(name IN LISTS listed)
  if(NOT name IN_LIST in_code)
    string(APPEND problems "\n  ${name}: listed, but no code reaches it")
  endif()
endforeach()
if(problems)
  message(FATAL_ERROR "the fault point lists and the code disagree:${problems}")
endif()
list(LENGTH listed n)
message(STATUS "fault points: the ${n} listed are the ${n} in the code")
