// Fractal Brownian motion clouds: octaves of value noise (Perlin 1985), contrast and colours from iParams.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    vec2 p = kd_rot(6.2831 * iParams[0].w) * uv * (2.0 + 8.0 * iParams[0].x) + iMouse.xy / iResolution.y * 10.0;
    float n = kd_fbm(p + 0.3 * iTime, 6);
    n = clamp((n - 0.5) * (1.5 + 4.0 * iParams[0].y) + 0.5, 0.0, 1.0);
    vec3 sky = kd_palette(iParams[0].z);
    vec3 cloud = kd_palette(iParams[0].z + 0.5);
    fragColor = vec4(mix(sky, cloud, n), 1.0);
}
